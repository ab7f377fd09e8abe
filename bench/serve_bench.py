"""Serving and publishing, each against what a user would reach for instead, in one run:

1. Scoring throughput (texts/s) of refit's predictor, float and int8, against Hugging Face's
   ``pipeline("text-classification")`` on the same encoder (the packaged all-MiniLM-L6-v2) and
   the same realistic review texts. Goal: int8 at least 2x the pipeline.
2. ``/predict`` under 32 concurrent clients (an async httpx load generator on loopback), with
   micro-batching and with one request per model call: throughput, p50 and p99. Goal: at least
   3x the throughput at equal p99.
3. Publishing and fetching a 90 MB checkpoint through refit's store (SHA-256 recorded, verified)
   against a bare boto3 ``upload_file`` / ``download_file`` (what ``aws s3 cp`` does), on the moto
   S3 server. Goal: at least 0.8x.

Run: python bench/serve_bench.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MB = 1024 * 1024


def review_texts(n: int, seed: int = 0) -> list[str]:
    from refit.ops.synth import generate_feedback

    rng = np.random.default_rng(seed)
    rows = generate_feedback(n, seed=seed, shifted=True)
    # real reviews run longer than the synthetic ones: join two or three of them
    return [" ".join(rows[(i + k) % n]["text"] for k in range(int(rng.integers(2, 4)))) for i in range(n)]


def minilm_checkpoint(folder: Path) -> Path:
    """A refit checkpoint on the packaged MiniLM, trained for a few steps (speed, not quality)."""
    from refit.core.settings import PACKAGED_MODEL
    from refit.models.config import TrainConfig, TrainData
    from refit.models.saving import save_checkpoint
    from refit.models.train import train
    from refit.training.modeling import resolve_base_model

    texts = review_texts(96, seed=1)
    y = np.linspace(0, 1, len(texts))
    config = TrainConfig(base_model=resolve_base_model(PACKAGED_MODEL), epochs=1, max_length=256, batch_size=16)
    result = train(config, TrainData(texts[:64], y[:64], texts[64:], y[64:]))
    return save_checkpoint(result, folder, {"version": "bench"})


def throughput(texts: list[str], checkpoint: Path) -> dict:
    import torch
    from transformers import pipeline

    from refit.core.settings import PACKAGED_MODEL
    from refit.models.predict import Predictor
    from refit.models.quantize import quantized
    from refit.training.modeling import resolve_base_model

    def rate(fn) -> float:
        fn(texts[:32])  # warm-up
        started = time.perf_counter()
        fn(texts)
        return len(texts) / (time.perf_counter() - started)

    predictor = Predictor(checkpoint)
    int8 = quantized(predictor, tolerance=0.05)
    hf = pipeline("text-classification", model=resolve_base_model(PACKAGED_MODEL), device=-1, torch_dtype=torch.float32)
    return {
        "pipeline": rate(lambda t: hf(t, batch_size=32, truncation=True, max_length=256)),
        "refit float": rate(predictor.predict),
        "refit int8": rate(int8.predict),
        "int8 gap": int8.quantization_gap,
    }


def start_server(settings, champion):
    import httpx
    import uvicorn

    from refit.serving.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        # On 127.0.0.1 for the run only; a token would add the same constant-time compare to both sides.
        uvicorn.Config(create_app(settings, champion, no_auth=True), host="127.0.0.1", port=port, log_level="error")
    )
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return server, url


async def load(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    import httpx

    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds

    async def client(k: int):
        nonlocal errors
        async with httpx.AsyncClient(timeout=60) as http:
            i = k
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                r = await http.post(f"{url}/predict", json={"items": [{"text": texts[i % len(texts)]}]})
                latencies.append(time.perf_counter() - started)
                errors += r.status_code != 200
                i += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / elapsed, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "errors": errors}


def serving(texts: list[str], store_url: str, work: Path, seconds: float) -> dict:
    from refit.core.settings import load_settings
    from refit.serving.follower import Champion

    results = {}
    for name, batch in (("one request per call", 1), ("micro-batching", 32)):
        settings = load_settings(store_url=store_url, work_dir=work, serve_batch_size=batch, serve_batch_wait_ms=5)
        champion = Champion(settings)
        champion.refresh()
        server, url = start_server(settings, champion)
        results[name] = asyncio.run(load(url, texts, clients=32, seconds=seconds))
        server.should_exit = True
        time.sleep(0.5)
    return results


def transfers(bucket: str, tmp: Path) -> dict:
    import boto3

    from refit.registry.store import open_store
    from refit.registry.versions import fetch_checkpoint, publish_checkpoint

    folder = tmp / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(90 * MB))
    (folder / "config.json").write_text("{}")
    (folder / "refit.json").write_text('{"task": "regression"}')
    store = open_store(f"s3://{bucket}/refit")
    s3 = boto3.client("s3")

    def timed(fn) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    bare_up = timed(lambda: s3.upload_file(str(folder / "model.safetensors"), bucket, "bare/model.safetensors"))
    bare_down = timed(lambda: s3.download_file(bucket, "bare/model.safetensors", str(tmp / "bare.bin")))
    ours_up = timed(lambda: publish_checkpoint(store, folder, "v-bench"))
    ours_down = timed(lambda: fetch_checkpoint(store, "v-bench", tmp / "fetched"))
    return {"bare up": bare_up, "bare down": bare_down, "refit up": ours_up, "refit down": ours_down}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--texts", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL_S3"] = f"http://{host}:{port}"
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    texts = review_texts(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = minilm_checkpoint(tmp / "minilm")

        speed = throughput(texts, checkpoint)
        print(f"1. scoring {len(texts)} reviews (all-MiniLM-L6-v2, max 256 tokens), texts/s")
        for name in ("pipeline", "refit float", "refit int8"):
            print(f"   {name:<12} {speed[name]:8.1f}  ({speed[name] / speed['pipeline']:.2f}x pipeline)")
        ratio = speed["refit int8"] / speed["pipeline"]
        print(f"   int8 within {speed['int8 gap']:.4f} of float; int8/pipeline {ratio:.2f} (goal >= 2)")

        from refit.registry.pointer import write_pointer
        from refit.registry.store import open_store
        from refit.registry.versions import publish_checkpoint

        store = open_store("s3://bench/serve")
        write_pointer(store, publish_checkpoint(store, checkpoint, "v-serve"), None)
        loaded = serving(texts, "s3://bench/serve", tmp / "work", args.seconds)
        print(f"2. /predict, 32 concurrent clients, {args.seconds:.0f} s each")
        for name, r in loaded.items():
            print(f"   {name:<22} {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms", end="")
            print(f"  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}")
        one, many = loaded["one request per call"], loaded["micro-batching"]
        speedup, p99 = many["rps"] / one["rps"], many["p99_ms"] / one["p99_ms"]
        print(f"   micro-batching throughput {speedup:.2f}x (goal >= 3), p99 {p99:.2f}x")

        moved = transfers("bench", tmp)
        print("3. a 90 MB checkpoint on the moto S3 server, seconds")
        for what, ours, bare, tool in (
            ("publish", "refit up", "bare up", "upload_file"),
            ("fetch", "refit down", "bare down", "download_file"),
        ):
            ratio = moved[bare] / moved[ours]
            print(f"   {what:<7} {moved[ours]:.2f} vs bare {tool} {moved[bare]:.2f}: {ratio:.2f}x (goal >= 0.8)")
    moto.stop()


if __name__ == "__main__":
    main()

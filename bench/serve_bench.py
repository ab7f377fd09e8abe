"""Serving and publishing, each against what a user would reach for instead, in one run:

1. Scoring throughput (texts/s) of refit's predictor, float and int8 (ONNX Runtime, refit's int8
   path), against Hugging Face's ``pipeline("text-classification")`` on the same encoder (the
   packaged all-MiniLM-L6-v2) and the same realistic review texts; torch's dynamic quantization,
   the int8 path ONNX Runtime replaced, is measured beside them. The methods take turns, round
   after round, so a change in the machine's load reaches them all alike; each figure is the
   median of its rounds. The int8 check: the largest difference and the label agreement on the
   checkpoint's own dev rows. Goal: int8 at least 3x the pipeline.
2. ``/predict`` under 32 concurrent clients against ``refit serve`` in a process of its own (as it
   runs), with micro-batching (the default settings) and with one request per model call
   (``REFIT_SERVE_BATCH_SIZE=1``); the two servers take turns, round after round. The clients
   hold keep-alive connections and write HTTP by hand, so that little of the two cores goes to
   them. Throughput, p50, p99 and texts per model call; beside them, the model's own gain from
   batching, ``32 * t(1 text) / t(32 texts)`` in this process: what a batch saves per text in the
   model alone, which bounds what batching requests can gain but for per-call overheads.
   Goal: at least 3x the throughput at equal or lower p99.
3. Publishing and fetching a 90 MB checkpoint through refit's store (the manifest's SHA-256, each
   part's CRC32 sent with it and the stored checksum compared before the seal; every fetched file
   verified) against a bare boto3 ``upload_file`` / ``download_file`` (what ``aws s3 cp`` does), on
   the moto S3 server; beside them, refit's upload of the weights alone and the SHA-256 pass.
   Goal: at least 0.8x.
4. Shadow overhead: the champion's answers (req/s, p50, p99) from ``refit serve`` with a candidate
   in shadow scoring every item, against the same champion served alone, at a paced load (where
   the server has idle time for shadow work) and at the saturating one; with how many items the
   candidate scored and dropped. Goal: the p99 within noise (at most 1.1x).

The run ends with each figure beside its goal, met or missed and by how much, and the machine's
load average before and after (the figures are only as steady as the machine was quiet).

Run: python bench/serve_bench.py [--seconds 10] [--rounds 3] [--parts 1234]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

MB = 1024 * 1024
CLIENTS = 32
GOALS = {"int8 / pipeline": 3.0, "micro-batching / one per call": 3.0, "publish": 0.8, "fetch": 0.8}


def review_texts(n: int, seed: int = 0) -> list[str]:
    from refit.ops.synth import generate_feedback

    rng = np.random.default_rng(seed)
    rows = generate_feedback(n, seed=seed, shifted=True)
    # real reviews run longer than the synthetic ones: join two or three of them
    return [" ".join(rows[(i + k) % n]["text"] for k in range(int(rng.integers(2, 4)))) for i in range(n)]


def minilm_checkpoint(folder: Path) -> Path:
    """A refit checkpoint on the packaged MiniLM, trained for a few steps (speed, not quality),
    with its dev rows' sample, as a training run saves it."""
    from refit.core.settings import PACKAGED_MODEL
    from refit.models.config import TrainConfig, TrainData
    from refit.models.dev_sample import write_dev_sample
    from refit.models.saving import save_checkpoint
    from refit.models.train import train
    from refit.training.modeling import resolve_base_model

    texts = review_texts(128, seed=1)
    y = np.linspace(0, 1, len(texts))
    config = TrainConfig(base_model=resolve_base_model(PACKAGED_MODEL), epochs=1, max_length=256, batch_size=16)
    result = train(config, TrainData(texts[:64], y[:64], texts[64:], y[64:]))
    save_checkpoint(result, folder, {"version": "bench"})
    write_dev_sample(folder, texts[64:])
    return folder


def _rounds(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Each function's seconds per round, the functions taking turns."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def throughput(texts: list[str], checkpoint: Path, rounds: int, tolerance: float) -> dict:
    import torch
    from transformers import pipeline

    from refit.core.settings import PACKAGED_MODEL
    from refit.models.dev_sample import read_dev_sample
    from refit.models.predict import Predictor
    from refit.models.quantize import agreement, quantized
    from refit.training.modeling import resolve_base_model

    predictor = Predictor(checkpoint)
    int8 = quantized(predictor, tolerance=tolerance)  # checked on the checkpoint's dev rows
    torch_int8 = Predictor(checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.ao.quantization is deprecated": the point of the comparison
        torch_int8.model = torch.ao.quantization.quantize_dynamic(
            torch_int8.model, {torch.nn.Linear}, dtype=torch.qint8
        )
    dev_texts, dev_features = read_dev_sample(checkpoint)
    float_dev = predictor.predict(dev_texts, dev_features)
    torch_check = agreement(predictor.task, float_dev, torch_int8.predict(dev_texts, dev_features))
    hf = pipeline("text-classification", model=resolve_base_model(PACKAGED_MODEL), device=-1, dtype=torch.float32)
    fns = {
        "pipeline": lambda: hf(texts, batch_size=32, truncation=True, max_length=256),
        "refit float": lambda: predictor.predict(texts),
        "refit int8": lambda: int8.predict(texts),
        "torch dynamic int8": lambda: torch_int8.predict(texts),
    }
    hf(texts[:32], batch_size=32, truncation=True, max_length=256)  # warm-up
    for model in (predictor, int8, torch_int8):
        model.predict(texts[:32])
    times = _rounds(fns, rounds)
    rates = {name: len(texts) / statistics.median(seconds) for name, seconds in times.items()}
    return {"rates": rates, "rounds": times, "int8 check": int8.int8_check, "torch int8 check": torch_check}


def batching_ceiling(texts: list[str], checkpoint: Path, reps: int = 5) -> dict:
    """The model's own gain from a batch: ``32 * t(1) / t(32)``, one by one and batched taking turns."""
    from refit.models.predict import Predictor

    predictor = Predictor(checkpoint)
    predictor.predict(texts[:CLIENTS])
    one = [[t] for t in texts[:CLIENTS]]
    times = _rounds(
        {"one": lambda: [predictor.predict(t) for t in one], "batch": lambda: predictor.predict(texts[:CLIENTS])}, reps
    )
    single, batched = statistics.median(times["one"]) / CLIENTS, statistics.median(times["batch"])
    return {"t1_ms": single * 1000, "t32_ms": batched * 1000, "ceiling": CLIENTS * single / batched}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict, work: Path, **settings) -> tuple[subprocess.Popen, int]:
    """``refit serve --no-auth`` in its own process (on 127.0.0.1, for the run only), once ready."""
    import httpx

    port = _free_port()
    extra = {f"REFIT_{k.upper()}": str(v) for k, v in settings.items()}
    process = subprocess.Popen(
        [sys.executable, "-m", "refit.cli", "serve", "--no-auth", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env, "REFIT_WORK_DIR": str(work), "REFIT_SERVE_POLL_S": "3600", **extra},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"refit serve exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("refit serve did not become ready")


async def load(port: int, bodies: list[bytes], clients: int, seconds: float, pause: float = 0.0) -> dict:
    """``clients`` keep-alive connections posting to ``/predict`` for ``seconds``, each waiting
    ``pause`` seconds after an answer before its next request (0: as fast as answers come)."""
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        try:
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                head = b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                started = time.perf_counter()
                writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                response = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in response.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                errors += not response.startswith(b"HTTP/1.1 200")
                i += clients
                if pause:
                    await asyncio.sleep(pause)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"latencies": latencies, "seconds": time.perf_counter() - started, "errors": errors}


def _model_calls(port: int) -> int:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/version", timeout=10).json()["model_calls"]


def serving(texts: list[str], env: dict, work: Path, seconds: float, rounds: int) -> dict:
    modes = {"one request per call": {"serve_batch_size": 1}, "micro-batching": {}}
    servers = {name: start_server(env, work / str(i), **extra) for i, (name, extra) in enumerate(modes.items())}
    bodies = [json.dumps({"items": [{"text": t}]}).encode() for t in texts]
    try:
        for _, port in servers.values():
            asyncio.run(load(port, bodies, CLIENTS, 1.0))  # warm-up
        calls = {name: _model_calls(port) for name, (_, port) in servers.items()}
        runs = {name: [] for name in servers}
        for _ in range(rounds):
            for name, (_, port) in servers.items():
                runs[name].append(asyncio.run(load(port, bodies, CLIENTS, seconds / rounds)))
        results = {}
        for name, (_, port) in servers.items():
            latencies = [x for run in runs[name] for x in run["latencies"]]
            q = statistics.quantiles(latencies, n=100)
            made = _model_calls(port) - calls[name]
            results[name] = {
                "rps": len(latencies) / sum(run["seconds"] for run in runs[name]),
                "p50_ms": q[49] * 1000,
                "p99_ms": q[98] * 1000,
                "errors": sum(run["errors"] for run in runs[name]),
                "texts_per_call": len(latencies) / max(made, 1),
            }
        return results
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)


SHADOW_LOADS = {"paced: 4 clients, 0.2 s apart": (4, 0.2), f"saturated: {CLIENTS} clients": (CLIENTS, 0.0)}


def shadow_overhead(texts: list[str], checkpoint: Path, work: Path, seconds: float, rounds: int) -> dict:
    """The champion's answers with a candidate in shadow (scoring every item, ``shadow_share`` 1)
    against the same champion alone: two ``refit serve`` processes taking turns under the same
    loads. Per load: req/s, p50 and p99 of the answers, and (shadow on) the items the candidate
    scored and dropped. No database: the prediction log's writes happen off the request path in
    both, so they are left out of both."""
    from refit.registry.pointer import write_candidate, write_pointer
    from refit.registry.store import open_store
    from refit.registry.versions import publish_checkpoint

    urls = {"shadow off": "s3://bench/shadow-off", "shadow on": "s3://bench/shadow-on"}
    for name, url in urls.items():
        store = open_store(url)
        write_pointer(store, publish_checkpoint(store, checkpoint, "v-champion"), None)
        if name == "shadow on":
            candidate = publish_checkpoint(store, checkpoint, "v-candidate")
            write_candidate(store, candidate, rollout_id=1, stage="shadow", share=0.0, shadow_share=1.0)
    servers = {name: start_server({"REFIT_STORE_URL": url}, work / name.split()[1]) for name, url in urls.items()}
    bodies = [json.dumps({"items": [{"text": t, "user_id": f"u{i}"}]}).encode() for i, t in enumerate(texts)]
    import httpx

    def shadow_counts(port: int) -> dict:
        return httpx.get(f"http://127.0.0.1:{port}/version", timeout=10).json().get("shadow") or {}

    def drained(port: int) -> dict:
        """Once the server's shadow queue is empty: its leftover work must not run during the
        other server's turn (it would slow the other server's answers, not its own)."""
        deadline = time.monotonic() + 120
        while (counts := shadow_counts(port)).get("queued", 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        return counts

    try:
        for _, port in servers.values():
            asyncio.run(load(port, bodies, CLIENTS, 1.0))  # warm-up
            drained(port)
        results = {}
        for load_name, (clients, pause) in SHADOW_LOADS.items():
            runs = {name: [] for name in servers}
            during = {name: {"scored": 0, "dropped": 0} for name in servers}
            for _ in range(rounds):
                for name, (_, port) in servers.items():
                    before = drained(port)
                    runs[name].append(asyncio.run(load(port, bodies, clients, seconds / rounds, pause)))
                    after = shadow_counts(port)  # what the candidate scored while the answers were timed
                    for key in during[name]:
                        during[name][key] += after.get(key, 0) - before.get(key, 0)
                    drained(port)
            for name in servers:
                latencies = [x for run in runs[name] for x in run["latencies"]]
                q = statistics.quantiles(latencies, n=100)
                results[(load_name, name)] = {
                    "rps": len(latencies) / sum(run["seconds"] for run in runs[name]),
                    "p50_ms": q[49] * 1000,
                    "p99_ms": q[98] * 1000,
                    "requests": len(latencies),
                    "errors": sum(run["errors"] for run in runs[name]),
                    "shadow_scored": during[name]["scored"],
                    "shadow_dropped": during[name]["dropped"],
                }
        return results
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)


def transfers(bucket: str, tmp: Path, rounds: int) -> dict:
    """Seconds to move a 90 MB checkpoint up and down, refit's way and boto3's bare way, taking
    turns for ``rounds`` rounds (a new version each); the medians, and every round. Beside them,
    what a publish adds around the upload: refit's upload of the weights alone (``put_file``) and
    the manifest's SHA-256 pass."""
    import boto3

    from refit.models.checkpoint import build_manifest
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

    times: dict[str, list[float]] = {
        name: [] for name in ("bare up", "bare down", "refit up", "refit down", "refit weights up", "manifest")
    }
    weights = str(folder / "model.safetensors")
    for k in range(rounds):
        bare, version = f"bare/{k}/model.safetensors", f"v-bench-{k}"
        times["bare up"].append(timed(functools.partial(s3.upload_file, weights, bucket, bare)))
        times["refit up"].append(timed(functools.partial(publish_checkpoint, store, folder, version)))
        times["bare down"].append(timed(functools.partial(s3.download_file, bucket, bare, str(tmp / "bare.bin"))))
        times["refit down"].append(timed(functools.partial(fetch_checkpoint, store, version, tmp / "fetched")))
        times["refit weights up"].append(timed(functools.partial(store.put_file, f"weights/{k}", Path(weights))))
        times["manifest"].append(timed(functools.partial(build_manifest, folder, version)))
    return {name: float(np.median(values)) for name, values in times.items()} | {"rounds": times}


def verdict(value: float, goal: float) -> str:
    """The goal line of a ratio: ``goal >= G: met by X`` or ``MISSED by X``; a negative ``goal``
    is an upper bound (``goal <= -G``)."""
    if goal < 0:
        met, by, bound = value <= -goal, abs(value + goal), f"<= {-goal:.1f}x"
    else:
        met, by, bound = value >= goal, abs(value - goal), f">= {goal:.1f}x"
    return f"goal {bound}: {'met' if met else 'MISSED'} by {by:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="load per serving mode, over all rounds")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="turns each method or server takes")
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 24 (default: all)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    from moto.server import ThreadedMotoServer

    from refit.core.settings import load_settings

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL_S3"] = f"http://{host}:{port}"
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    texts = review_texts(args.texts)
    tolerance = load_settings().serve_quantize_tolerance
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = minilm_checkpoint(tmp / "minilm")

        if "1" in args.parts:
            speed = throughput(texts, checkpoint, args.rounds, tolerance)
            rates, check, torch_check = speed["rates"], speed["int8 check"], speed["torch int8 check"]
            print(
                f"1. scoring {len(texts)} reviews (all-MiniLM-L6-v2, max 256 tokens), texts/s, median of {args.rounds}"
            )
            for name, rate in rates.items():
                per_round = ", ".join(f"{len(texts) / s:.0f}" for s in speed["rounds"][name])
                print(f"   {name:<19} {rate:8.1f}  ({rate / rates['pipeline']:.2f}x pipeline; rounds {per_round})")
            print(
                f"   int8 check on the checkpoint's {check['rows']} {check['source']}: max |diff| "
                f"{check['max_abs_diff']:.4f} (tolerance {tolerance}), "
                f"labels agree {100 * check['label_agreement']:.1f}%;"
                f" torch dynamic int8: {torch_check['max_abs_diff']:.4f}, {100 * torch_check['label_agreement']:.1f}%"
            )
            int8_ratio = rates["refit int8"] / rates["pipeline"]
            summary.append(("int8 / pipeline texts/s", int8_ratio, GOALS["int8 / pipeline"], ""))

        if "2" in args.parts:
            from refit.registry.pointer import write_pointer
            from refit.registry.store import open_store
            from refit.registry.versions import publish_checkpoint

            store = open_store("s3://bench/serve")
            write_pointer(store, publish_checkpoint(store, checkpoint, "v-serve"), None)
            ceiling = batching_ceiling(texts, checkpoint)
            served = serving(texts, {"REFIT_STORE_URL": "s3://bench/serve"}, tmp / "work", args.seconds, args.rounds)
            print(
                f"2. /predict, refit serve in its own process, {CLIENTS} concurrent clients, {args.seconds:.0f} s each"
            )
            for name, r in served.items():
                print(
                    f"   {name:<22} {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms", end=""
                )
                print(f"  {r['texts_per_call']:5.1f} texts/call  errors {r['errors']}")
            one, many = served["one request per call"], served["micro-batching"]
            speedup, p99 = many["rps"] / one["rps"], many["p99_ms"] / one["p99_ms"]
            print(
                f"   the model alone: 1 text {ceiling['t1_ms']:.1f} ms, {CLIENTS} texts {ceiling['t32_ms']:.0f} ms: "
                f"{ceiling['ceiling']:.2f}x the texts/s from batching them"
            )
            why = (
                f"in the model alone a batch of {CLIENTS} scores {ceiling['ceiling']:.2f}x the texts/s of one at a time"
            )
            summary.append(
                ("micro-batching / one per call req/s", speedup, GOALS["micro-batching / one per call"], why)
            )
            summary.append(("micro-batching / one per call p99", p99, -1.0, ""))

        if "3" in args.parts:
            moved = transfers("bench", tmp, args.rounds)
            print(f"3. a 90 MB checkpoint on the moto S3 server, seconds, median of {args.rounds} rounds taking turns")
            for what, ours, bare, tool in (
                ("publish", "refit up", "bare up", "upload_file"),
                ("fetch", "refit down", "bare down", "download_file"),
            ):
                ratio = moved[bare] / moved[ours]
                pairs = zip(moved["rounds"][ours], moved["rounds"][bare], strict=True)
                each = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in pairs)
                print(f"   {what:<7} {moved[ours]:.2f} vs bare {tool} {moved[bare]:.2f}: {ratio:.2f}x (rounds {each})")
                why = ""
                if what == "publish":
                    weights, sha = moved["refit weights up"], moved["manifest"]
                    print(
                        f"   of which the weights' upload alone {weights:.2f} ({moved[bare] / weights:.2f}x bare), "
                        f"the manifest's SHA-256 pass {sha:.2f}; then the small files and the HEAD checks"
                    )
                    why = f"the weights' upload alone is {moved[bare] / weights:.2f}x bare"
                summary.append((f"{what} vs bare boto3", ratio, GOALS[what], why))

        if "4" in args.parts:
            shadow = shadow_overhead(texts, checkpoint, tmp / "shadow", args.seconds, args.rounds)
            print("4. the champion's answers with a candidate in shadow (scoring every item) vs alone")
            for (load_name, name), r in shadow.items():
                print(f"   {load_name:<28} {name:<10} {r['rps']:6.1f} req/s  p50 {r['p50_ms']:7.1f} ms", end="")
                print(f"  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}", end="")
                if name == "shadow on":
                    scored, dropped = r["shadow_scored"], r["shadow_dropped"]
                    print(f"  shadow scored {scored} of {r['requests']} meanwhile, dropped {dropped}", end="")
                print()
            for load_name in SHADOW_LOADS:
                on, off = shadow[(load_name, "shadow on")], shadow[(load_name, "shadow off")]
                coverage = on["shadow_scored"] / max(on["requests"], 1)
                note = f"off {off['p99_ms']:.0f} ms, on {on['p99_ms']:.0f} ms; shadow scored {100 * coverage:.0f}%"
                summary.append(
                    (f"shadow p99 on/off, {load_name.split(':')[0]}", on["p99_ms"] / off["p99_ms"], -1.1, note)
                )
    moto.stop()
    load_after = os.getloadavg()
    print("goals")
    for name, value, goal, note in summary:
        print(f"   {name:<36} {value:5.2f}x  {verdict(value, goal)}" + (f"; {note}" if note else ""))
    print(
        f"load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after {', '.join(f'{x:.2f}' for x in load_after)}; {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()

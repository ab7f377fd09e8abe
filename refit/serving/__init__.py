"""``refit serve``: a FastAPI app that always serves the current champion, verified.

- **The champion.** At start the pointer names a version; it is downloaded to the local cache,
  every file is checked against the manifest, and it is loaded. A version that fails the check
  is refused and the previous one keeps serving.
- **Hot reload.** A watcher polls the pointer's ETag; on a change it loads the new version beside
  the old one, warms it up, swaps one reference, and drops the old one. Requests already batched
  finish on the model they started with.
- **Micro-batching.** Concurrent requests are gathered into one model call, up to
  ``REFIT_SERVE_BATCH_SIZE`` texts or ``REFIT_SERVE_BATCH_WAIT_MS``.
- **Limits and auth.** Bodies are validated (422 with the reason, never a 500); batches and texts
  are bounded; predict, explain and reload need the bearer token when one is set.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
import asyncio
import hmac
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictStr, create_model, field_validator

from refit.core.errors import NoChampionError, RefitError

log = logging.getLogger("refit.serve")


@dataclass
class Loaded:
    """One loaded version: what a batch runs on from start to end."""

    version: str
    predictor: Any
    etag: str | None
    loaded_at: float = field(default_factory=time.time)


class Champion:
    """The model being served and how it changes: load, verify, warm up, swap."""

    def __init__(self, settings, store=None):
        from refit.registry.store import store_for

        self.settings = settings
        self.store = store or store_for(settings)
        self.current: Loaded | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one load at a time

    def load(self, version: str, etag: str | None) -> Loaded:
        """Download (or reuse the verified cache of) ``version``, load and warm it up."""
        from refit.models.predict import Predictor
        from refit.models.quantize import INT8_FILE
        from refit.registry import checkout

        folder = checkout(self.settings, version)
        if self.settings.serve_quantize and (folder / INT8_FILE).is_file():
            # The int8 weights published beside the float ones, checked on the dev set then.
            predictor = Predictor(folder, int8=True)
            predictor.quantization_gap = predictor.meta["int8"]["max_abs_diff"]
        else:
            predictor = Predictor(folder)
            if self.settings.serve_quantize:
                predictor = quantized(predictor, self.settings.serve_quantize_tolerance)
        predictor.predict(["warm-up text for a new model"])  # first-call costs before the swap
        return Loaded(version, predictor, etag)

    def refresh(self, force: bool = False) -> bool:
        """Check the pointer; load and swap when it moved. Returns whether the model changed.

        A version that cannot be loaded (checksum mismatch, unreadable files) is refused: the
        reason is logged and counted, and the current model keeps serving.
        """
        from refit.registry import pointer_key, read_pointer

        with self._lock:
            current = self.current
            head = self.store.head(pointer_key(self.settings.model_name))
            if head is not None and current is not None and not force and head.etag == current.etag:
                return False  # the pointer has not moved: nothing to read
            pointer = read_pointer(self.store, self.settings.model_name) if head is not None else None
            if pointer is None:
                if current is None:
                    raise NoChampionError("the store has no champion pointer yet: run `refit run` first")
                return False
            etag = head.etag
            if current is not None and not force and pointer["version"] == current.version:
                current.etag = etag  # rewritten, same version
                return False
            try:
                loaded = self.load(pointer["version"], etag)
            except RefitError as exc:
                self.reload_failures += 1
                self.last_error = f"refused {pointer['version']}: {exc}"
                log.error("%s; still serving %s", self.last_error, current.version if current else "nothing")
                if current is None:
                    raise
                return False
            self.current = loaded  # the swap: one reference
            self.reloads += 1
            self.last_error = None
            log.info("now serving %s (was %s)", loaded.version, current.version if current else "none")
            return True


def quantized(predictor, tolerance: float, sample: list[str] | None = None, features=None):
    """int8 dynamic quantization of the linear layers, kept only if its predictions stay within
    ``tolerance`` of the float model's on a sample of texts (the largest absolute difference).
    ``features`` are the sample's behaviour features (the publish-time check passes the dev rows')."""
    import copy

    import torch

    float_model = predictor.model
    texts = sample or QUANTIZATION_CHECK_TEXTS
    before = predictor.predict(texts, features)
    quant = copy.copy(predictor)
    quant.model = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(float_model), {torch.nn.Linear}, dtype=torch.qint8
    )
    after = quant.predict(texts, features)
    gap = float(np.max(np.abs(after - before)))
    if gap > tolerance:
        raise RefitError(f"int8 predictions differ from float by {gap:.4f} > {tolerance}; serving float instead")
    quant.quantization_gap = gap
    log.info("int8 model within %.4f of float on %d texts", gap, len(texts))
    return quant


QUANTIZATION_CHECK_TEXTS = [
    "The headphones are excellent, love it, arrived on time.",
    "Terrible charger, broke after a day, returned it.",
    "The kettle is okay, does the job, nothing special.",
    "Solid jacket, works well, would recommend to my friends.",
    "Cheaply made and flimsy; customer service never answered.",
    "Absolutely fantastic cookbook, best purchase ever.",
    "Meh quality, not worth the price, shipping was slow.",
    "Good blender but the lid leaks a little.",
]


class PredictionLog:
    """Predictions written to ``prediction_log`` in batches, off the request path.

    A request only appends to a buffer; a thread writes it every ``flush_s`` seconds or
    ``batch`` rows. If the database is down the rows wait (up to ``cap``; beyond that the oldest
    are dropped and counted), and serving never fails because of logging.
    """

    def __init__(self, engine, flush_s: float = 2.0, batch: int = 500, cap: int = 100_000):
        self.engine, self.flush_s, self.batch, self.cap = engine, flush_s, batch, cap
        self.rows: list[dict] = []
        self.written = self.dropped = 0
        self._lock, self._wake, self._stop = threading.Lock(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="refit-prediction-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()

    def add(self, version: str, texts: list[str], records: list[dict]) -> None:
        import hashlib
        import json

        rows = []
        for text_, record in zip(texts, records, strict=True):
            probabilities = {k[2:]: v for k, v in record.items() if k.startswith("p_")}
            regression = not probabilities
            rows.append(
                {
                    "v": version,
                    "h": hashlib.sha256(text_.encode()).hexdigest(),
                    "n": len(text_),
                    "s": record["prediction"] if regression else None,
                    "l": None if regression else record["prediction"],
                    "p": json.dumps(probabilities) if probabilities else None,
                }
            )
        with self._lock:
            self.rows.extend(rows)
            if len(self.rows) > self.cap:
                self.dropped += len(self.rows) - self.cap
                del self.rows[: len(self.rows) - self.cap]
            if len(self.rows) >= self.batch:
                self._wake.set()

    def flush(self) -> int:
        from sqlalchemy import text

        with self._lock:
            rows, self.rows = self.rows, []
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO prediction_log (model_version, text_sha256, text_chars, satisfaction, label,"
                        " probabilities) VALUES (:v, :h, :n, :s, :l, CAST(:p AS JSONB))"
                    ),
                    rows,
                )
        except Exception as exc:  # the database is away: keep the rows for the next try
            log.warning("prediction log not written (%d rows kept): %s", len(rows), str(exc).splitlines()[0])
            with self._lock:
                self.rows[:0] = rows
            return 0
        self.written += len(rows)
        return len(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()


# --- the request and response bodies ---------------------------------------------------------


# A feature value is a scalar, or a list of numbers for a precomputed embedding vector.
FeatureValue = StrictStr | float | bool | list[float] | None


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The feedback text.")
    features: dict[str, FeatureValue] | None = Field(default=None, description="Behaviour features by name.")

    @field_validator("text")
    @classmethod
    def _encodable(cls, value: str) -> str:
        # JSON can carry lone UTF-16 surrogates ("\ud800") that no tokenizer or UTF-8 encoder
        # accepts; they become U+FFFD like any other undecodable character.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value


def request_model(name: str, max_items: int) -> type[BaseModel]:
    """The request body with its item limit in the schema, so the OpenAPI spec documents it."""
    return create_model(
        name,
        __config__=ConfigDict(extra="forbid"),
        items=(list[Item], Field(min_length=1, max_length=max_items, description="What to score.")),
    )


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong.")


def _feature_error(exc: Exception):
    """A model that cannot read a request's features: a 422 shaped like every other 422."""
    from fastapi.exceptions import RequestValidationError

    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RequestValidationError([{"type": "value_error", "loc": ("body", "items", "features"), "msg": message}])


class Batcher:
    """Gathers concurrent requests into one model call (one call at a time, off the event loop)."""

    def __init__(self, champion: Champion, max_size: int, wait_ms: float):
        self.champion, self.max_size, self.wait = champion, max_size, wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.calls = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._task.cancel()

    async def submit(self, texts: list[str], features: list[dict] | None):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, features, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0][0])
            deadline = loop.time() + self.wait
            while size < self.max_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += len(job[0])
            loaded = self.champion.current
            texts = [t for job in jobs for t in job[0]]
            features = [f for job in jobs for f in (job[1] or [{}] * len(job[0]))]
            try:
                prediction = await loop.run_in_executor(None, _predict, loaded.predictor, texts, features)
            except Exception as exc:  # a model failure fails its requests, not the server
                if len(jobs) == 1:
                    jobs[0][2].set_exception(exc)
                    continue
                # One bad request must not fail the others it was batched with: score each alone.
                for job_texts, job_features, future in jobs:
                    try:
                        alone = await loop.run_in_executor(
                            None, _predict, loaded.predictor, job_texts, job_features or [{}] * len(job_texts)
                        )
                        future.set_result((alone, loaded))
                    except Exception as job_exc:
                        future.set_exception(job_exc)
                    self.calls += 1
                continue
            self.calls += 1
            start = 0
            for job_texts, _, future in jobs:
                future.set_result((prediction[start : start + len(job_texts)], loaded))
                start += len(job_texts)


def _predict(predictor, texts: list[str], features: list[dict]) -> np.ndarray:
    with_features = any(features) and predictor.feature_names
    return predictor.predict(texts, features if with_features else None)


def create_app(settings, champion: Champion | None = None):
    """The FastAPI app; ``champion`` must already hold a loaded model (see :func:`serve`)."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    champion = champion or Champion(settings)
    token = settings.serve_token.get_secret_value() if settings.serve_token else None
    batcher = Batcher(champion, settings.serve_batch_size, settings.serve_batch_wait_ms)
    registry = CollectorRegistry()
    requests = Counter("refit_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=registry)
    latency = Histogram("refit_request_seconds", "Request latency", ["endpoint"], registry=registry)
    reloads = Gauge("refit_model_reloads", "Model swaps since start", registry=registry)
    failures = Gauge("refit_model_reload_failures", "Versions refused since start", registry=registry)
    info = Gauge("refit_model_info", "The version being served", ["version"], registry=registry)
    stop = threading.Event()
    prediction_log = None
    if settings.serve_log_predictions:
        from refit.data.db import engine_for

        prediction_log = PredictionLog(engine_for(settings), settings.serve_log_flush_s)

    def watch() -> None:
        while not stop.wait(settings.serve_poll_s):
            try:
                champion.refresh()
            except Exception as exc:  # the store is down: keep serving, try again later
                log.warning("pointer check failed: %s", exc)

    async def lifespan(app):
        await batcher.start()
        watcher = threading.Thread(target=watch, name="refit-pointer-watch", daemon=True)
        watcher.start()
        if prediction_log:
            prediction_log.start()
        yield
        stop.set()
        await batcher.stop()
        if prediction_log:
            prediction_log.stop()

    app = FastAPI(title="refit", summary="The current champion satisfaction model.", lifespan=lifespan)
    PredictRequest = request_model("PredictRequest", settings.serve_max_items)  # noqa: N806 - a class
    ExplainRequest = request_model("ExplainRequest", min(8, settings.serve_max_items))  # noqa: N806 - a class
    unauthorized = {401: {"model": ErrorBody, "description": "Missing or wrong bearer token."}}

    @app.exception_handler(StarletteHTTPException)
    async def body_errors_are_422(request: Request, exc: StarletteHTTPException):
        # A body that is not even decodable (invalid UTF-8 declared as JSON) is a bad body like
        # any other: a 422 in the documented shape, not Starlette's undocumented 400.
        if exc.status_code == 400:
            error = {"type": "json_invalid", "loc": ("body",), "msg": f"the body cannot be read: {exc.detail}"}
            return await request_validation_exception_handler(request, RequestValidationError([error]))
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_bodies_are_422(request: Request, exc: RequestValidationError):
        # FastAPI echoes the offending input; raw bytes that are not UTF-8 (a body sent without a
        # content type) would make its own handler fail with a 500.
        errors = [
            {**e, "input": e["input"].decode("utf-8", "replace")} if isinstance(e.get("input"), bytes) else e
            for e in exc.errors()
        ]
        return await request_validation_exception_handler(request, RequestValidationError(errors))

    def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        latency.labels(request.url.path).observe(time.perf_counter() - started)
        requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    @app.post("/predict", dependencies=[Depends(authorized)], responses=unauthorized)
    async def predict(body: PredictRequest) -> dict:
        limit = settings.serve_max_text_chars
        texts = [item.text[:limit] for item in body.items]
        truncated = [len(item.text) > limit for item in body.items]
        features = [item.features or {} for item in body.items]
        try:
            prediction, loaded = await batcher.submit(texts, features)
        except ValueError as exc:  # features the model cannot read (a vector of the wrong length)
            raise _feature_error(exc) from None
        records = loaded.predictor.to_records(prediction)
        if prediction_log:
            prediction_log.add(loaded.version, texts, records)
        out = []
        for record, cut in zip(records, truncated, strict=True):
            probabilities = {k[2:]: v for k, v in record.items() if k.startswith("p_")}
            row = {"label": record["prediction"], "probabilities": probabilities}
            if loaded.predictor.task == "regression":
                row = {"satisfaction": record["prediction"]}
            out.append({**row, "truncated": cut})
        return {"predictions": out, "model_version": loaded.version}

    @app.post(
        "/explain",
        dependencies=[Depends(authorized)],
        responses={**unauthorized, 501: {"model": ErrorBody, "description": "Explanations are not in this build."}},
    )
    async def explain(body: ExplainRequest) -> dict:
        try:
            from refit.models.explain import explain as explain_one
        except ImportError:
            raise HTTPException(501, "explanations are not available in this build") from None
        loaded = champion.current
        loop = asyncio.get_running_loop()
        results = []
        for item in body.items:
            text = item.text[: settings.serve_max_text_chars]
            try:
                found = await loop.run_in_executor(None, explain_one, loaded.predictor, text, item.features)
            except ValueError as exc:
                raise _feature_error(exc) from None
            results.append({**asdict(found), "completeness_error": found.delta})
        return {"explanations": results, "model_version": loaded.version}

    @app.post(
        "/reload",
        dependencies=[Depends(authorized)],
        responses={**unauthorized, 503: {"model": ErrorBody, "description": "The store cannot be read now."}},
    )
    async def reload() -> dict:
        try:
            changed = await asyncio.get_running_loop().run_in_executor(None, champion.refresh)
        except RefitError as exc:  # the store is away: the current model keeps serving
            raise HTTPException(503, f"the champion pointer cannot be read: {exc}") from None
        return {"changed": changed, "model_version": champion.current.version, "error": champion.last_error}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorBody, "description": "No model loaded yet."}})
    async def readyz() -> dict:
        if champion.current is None:
            raise HTTPException(503, "no model loaded yet")
        return {"status": "ready", "model_version": champion.current.version}

    @app.get("/version")
    async def version() -> dict:
        current = champion.current
        return {
            "model_version": current and current.version,
            "loaded_at": current and current.loaded_at,
            "reloads": champion.reloads,
            "reload_failures": champion.reload_failures,
            "last_error": champion.last_error,
            "quantized": bool(current and getattr(current.predictor, "quantization_gap", None) is not None),
            "model_calls": batcher.calls,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        reloads.set(champion.reloads)
        failures.set(champion.reload_failures)
        info.clear()
        if champion.current:
            info.labels(champion.current.version).set(1)
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    app.state.champion, app.state.batcher, app.state.prediction_log = champion, batcher, prediction_log
    return app


def serve(settings) -> None:
    """Load the champion (exit with the reason when it cannot be), then run uvicorn."""
    import uvicorn

    champion = Champion(settings)
    champion.refresh()  # raises: no pointer, or the first champion fails verification
    log.info("serving %s on %s:%d", champion.current.version, settings.serve_host, settings.serve_port)
    uvicorn.run(create_app(settings, champion), host=settings.serve_host, port=settings.serve_port, log_level="info")

"""``refit serve``: a FastAPI app that always serves the current champion, verified.

The champion and its hot reload are :mod:`refit.serving.follower`'s; the micro-batching is
:mod:`refit.serving.batching`'s; the prediction log is :mod:`refit.serving.predlog`'s. Here:
the routes, their limits and auth (bodies are validated, a 422 with the reason, never a 500;
batches and texts are bounded; predict, explain and reload need the bearer token, and the app
refuses to start without one unless told ``no_auth``), the metrics (labelled by route template,
so unknown paths cannot grow the series), the pointer watcher thread, and :func:`serve`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
import asyncio
import hmac
import logging
import threading
import time
from dataclasses import asdict

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from refit.core.errors import ConfigError, RefitError
from refit.data.db import engine_for
from refit.serving.batching import Batcher
from refit.serving.bodies import ErrorBody, feature_error, request_model
from refit.serving.follower import Champion
from refit.serving.predlog import PredictionLog

log = logging.getLogger("refit.serve")
UNMATCHED = "unmatched"  # the one metrics label of every path no route serves (scans, typos)
NO_TOKEN = (
    "REFIT_SERVE_TOKEN is not set: set it to a secret bearer token, or start with --no-auth to let anyone "
    "who reaches the port call /predict, /explain and /reload"
)
NO_AUTH_WARNING = (
    "serving WITHOUT AUTHENTICATION (--no-auth): anyone who reaches %s:%d can call /predict, /explain and "
    "/reload; set REFIT_SERVE_TOKEN instead outside a trusted local network"
)


def serve_token(settings, no_auth: bool = False) -> str | None:
    """The bearer token the app requires, or ``None`` when serving without one was asked for.

    Args:
        settings: the settings (``serve_token`` is read).
        no_auth: serve without a token (``refit serve --no-auth``); ignored when a token is set.

    Returns:
        The token, or ``None`` with ``no_auth`` and no token set.

    Raises:
        ConfigError: no token is set and ``no_auth`` was not given.
    """
    if settings.serve_token is not None and settings.serve_token.get_secret_value():
        return settings.serve_token.get_secret_value()
    if not no_auth:
        raise ConfigError(NO_TOKEN)
    return None


def create_app(settings, champion: Champion | None = None, *, no_auth: bool = False):
    """The FastAPI app; ``champion`` must already hold a loaded model (see :func:`serve`).

    Args:
        settings: the settings.
        champion: the loaded champion (default: one made from ``settings``).
        no_auth: serve without a bearer token when ``REFIT_SERVE_TOKEN`` is not set (warned about).

    Raises:
        ConfigError: no token is set and ``no_auth`` was not given.
    """
    token = serve_token(settings, no_auth)
    if token is None:
        log.warning(NO_AUTH_WARNING, settings.serve_host, settings.serve_port)
    champion = champion or Champion(settings)
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

    def route_of(request: Request) -> str:
        # The route's template, not the raw path: a scan of random URLs must not add series.
        # A partial match (the path of a route, another method: a 405) is that route too.
        for route in app.router.routes:
            if route.matches(request.scope)[0] is not Match.NONE:
                return getattr(route, "path", UNMATCHED)
        return UNMATCHED

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = route_of(request)
        latency.labels(endpoint).observe(time.perf_counter() - started)
        requests.labels(endpoint, str(response.status_code)).inc()
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
            raise feature_error(exc) from None
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
            # Imported per request, not at the top: explanations are optional in a build, and the
            # app must start (and answer 501 here) without them.
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
                raise feature_error(exc) from None
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


def serve(settings, no_auth: bool = False) -> None:
    """Load the champion (exit with the reason when it cannot be), then run uvicorn.

    Args:
        settings: the settings.
        no_auth: serve without a bearer token when ``REFIT_SERVE_TOKEN`` is not set (warned about).

    Raises:
        ConfigError: no token is set and ``no_auth`` was not given (before anything is loaded).
    """
    serve_token(settings, no_auth)  # refuse before the download and the model load, not after
    champion = Champion(settings)
    champion.refresh()  # raises: no pointer, or the first champion fails verification
    app = create_app(settings, champion, no_auth=no_auth)
    log.info("serving %s on %s:%d", champion.current.version, settings.serve_host, settings.serve_port)
    uvicorn.run(app, host=settings.serve_host, port=settings.serve_port, log_level="info")

"""``refit serve``: a FastAPI app that always serves the current champion, verified, and the
candidate of a live rollout beside it.

The champion, the candidate and their hot reloads are :mod:`refit.serving.follower`'s; which
model answers a request, the other's shadow scoring and the per-model evidence are
:mod:`refit.serving.router`'s; the micro-batching is :mod:`refit.serving.batching`'s; the
prediction log is :mod:`refit.serving.predlog`'s. Here: the routes, their limits and auth (bodies
are validated, a 422 with the reason, never a 500; batches and texts are bounded; predict, explain
and reload need the bearer token, and the app refuses to start without one unless told
``no_auth``), the metrics (labelled by route template, so unknown paths cannot grow the series),
the pointer watcher threads (champion and candidate), and :func:`serve`.

Every prediction names the version that made it (``model_version``, per prediction and for the
request), in every mode, so that a response in shadow is byte for byte the response without a
candidate.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
import asyncio
import hmac
import logging
import threading
import time
from dataclasses import asdict

import uvicorn
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from refit.core.errors import ConfigError, RefitError
from refit.data.db import engine_for
from refit.serving.bodies import ErrorBody, feature_error, request_model
from refit.serving.follower import Candidate, Champion, Follower
from refit.serving.predlog import PredictionLog
from refit.serving.router import ModelMetrics, Router

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


def create_app(
    settings, champion: Champion | None = None, *, no_auth: bool = False, candidate: Candidate | None = None
):
    """The FastAPI app; ``champion`` must already hold a loaded model (see :func:`serve`).

    Args:
        settings: the settings.
        champion: the loaded champion (default: one made from ``settings``).
        no_auth: serve without a bearer token when ``REFIT_SERVE_TOKEN`` is not set (warned about).
        candidate: the candidate follower (default: one on the champion's store, checked as soon
            as the app starts and then every ``REFIT_ROLLOUT_POLL_S`` seconds).

    Raises:
        ConfigError: no token is set and ``no_auth`` was not given.
    """
    token = serve_token(settings, no_auth)
    if token is None:
        log.warning(NO_AUTH_WARNING, settings.serve_host, settings.serve_port)
    champion = champion or Champion(settings)
    candidate = candidate or Candidate(settings, champion.store)
    registry = CollectorRegistry()
    requests = Counter("refit_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=registry)
    latency = Histogram("refit_request_seconds", "Request latency", ["endpoint"], registry=registry)
    reloads = Gauge("refit_model_reloads", "Model swaps since start", registry=registry)
    failures = Gauge("refit_model_reload_failures", "Versions refused since start", registry=registry)
    info = Gauge("refit_model_info", "The version being served", ["version"], registry=registry)
    candidate_info = Gauge(
        "refit_candidate_info",
        "The candidate in live rollout: its canary share",
        ["version", "stage"],
        registry=registry,
    )
    candidate_failures = Gauge("refit_candidate_reload_failures", "Candidates refused since start", registry=registry)
    model_metrics = ModelMetrics(registry)
    stop = threading.Event()
    prediction_log = None
    # A live rollout logs both models' predictions whatever REFIT_SERVE_LOG_PREDICTIONS says (its
    # evidence); the log is ready whenever a database is configured, and written only then.
    if settings.serve_log_predictions or settings.database_url:
        prediction_log = PredictionLog(engine_for(settings), settings.serve_log_flush_s)
    router = Router(settings, champion, candidate, prediction_log, model_metrics)
    batcher = router.champion_batcher

    def watch(follower: Follower, interval: float, at_once: bool) -> None:
        if at_once:
            check(follower)
        while not stop.wait(interval):
            check(follower)

    def check(follower: Follower) -> None:
        try:
            follower.refresh()
        except Exception as exc:  # the store is down: keep serving, try again later
            log.warning("%s pointer check failed: %s", type(follower).__name__.lower(), exc)

    async def lifespan(app):
        await router.start()
        watchers = [
            threading.Thread(target=watch, args=(champion, settings.serve_poll_s, False), name="refit-pointer-watch"),
            threading.Thread(
                target=watch, args=(candidate, settings.rollout_poll_s, True), name="refit-candidate-watch"
            ),
        ]
        for watcher in watchers:
            watcher.daemon = True
            watcher.start()
        if prediction_log:
            prediction_log.start()
        yield
        stop.set()
        await router.stop()
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
    async def predict(body: PredictRequest, background: BackgroundTasks) -> dict:
        limit = settings.serve_max_text_chars
        texts = [item.text[:limit] for item in body.items]
        truncated = [len(item.text) > limit for item in body.items]
        features = [item.features or {} for item in body.items]
        ids = [{"feedback_id": i.feedback_id, "user_id": i.user_id, "item_id": i.item_id} for i in body.items]
        try:
            answer = await router.answer(texts, features, ids, body.request_id)
        except ValueError as exc:  # features the model cannot read (a vector of the wrong length)
            raise feature_error(exc) from None
        if answer.shadow:
            background.add_task(router.shadow.add, answer.shadow)  # after the response is sent
        loaded = answer.loaded
        out = []
        for record, cut in zip(answer.records, truncated, strict=True):
            probabilities = {k[2:]: v for k, v in record.items() if k.startswith("p_")}
            row = {"label": record["prediction"], "probabilities": probabilities}
            if loaded.predictor.task == "regression":
                row = {"satisfaction": record["prediction"]}
            out.append({**row, "truncated": cut, "model_version": loaded.version})
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
        loop = asyncio.get_running_loop()
        try:
            changed = await loop.run_in_executor(None, champion.refresh)
        except RefitError as exc:  # the store is away: the current model keeps serving
            raise HTTPException(503, f"the champion pointer cannot be read: {exc}") from None
        try:
            # A candidate the poll refused is tried again when an operator asks.
            candidate_changed = await loop.run_in_executor(None, candidate.refresh, True)
        except RefitError as exc:
            raise HTTPException(503, f"the candidate pointer cannot be read: {exc}") from None
        return {
            "changed": changed,
            "model_version": champion.current.version,
            "error": champion.last_error,
            "candidate_changed": candidate_changed,
            "candidate": describe(candidate.current),
            "candidate_error": candidate.last_error,
        }

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
            "candidate": describe(candidate.current),
            "candidate_reloads": candidate.reloads,
            "candidate_failures": candidate.reload_failures,
            "candidate_error": candidate.last_error,
            "candidate_model_calls": router.candidate_batcher.calls,
            "shadow": {
                "queued": len(router.shadow.queue),
                "scored": router.shadow.scored,
                "errors": router.shadow.errors,
                "dropped": router.shadow.dropped,
                "discarded": router.shadow.discarded,
            },
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        reloads.set(champion.reloads)
        failures.set(champion.reload_failures)
        candidate_failures.set(candidate.reload_failures)
        info.clear()
        if champion.current:
            info.labels(champion.current.version).set(1)
            model_metrics.calls("champion", champion.current)
        candidate_info.clear()
        if candidate.current:
            candidate_info.labels(candidate.current.version, candidate.current.rollout.stage).set(
                candidate.current.rollout.share
            )
            model_metrics.calls("candidate", candidate.current)
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    app.state.champion, app.state.batcher, app.state.prediction_log = champion, batcher, prediction_log
    app.state.candidate, app.state.router = candidate, router
    return app


def describe(loaded) -> dict | None:
    """The candidate as ``/version`` reports it: version, rollout, stage and shares (None: no candidate)."""
    if loaded is None:
        return None
    rollout = loaded.rollout
    return {
        "version": loaded.version,
        "rollout_id": rollout.id,
        "stage": rollout.stage,
        "share": rollout.share,
        "shadow_share": rollout.shadow_share,
        "loaded_at": loaded.loaded_at,
    }


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
    candidate = Candidate(settings, champion.store)
    try:
        candidate.refresh()  # a live rollout's candidate serves from the start; a refused one is counted
    except RefitError as exc:  # the champion alone until the watcher reads the pointer
        log.warning("candidate pointer check failed: %s", exc)
    app = create_app(settings, champion, no_auth=no_auth, candidate=candidate)
    log.info("serving %s on %s:%d", champion.current.version, settings.serve_host, settings.serve_port)
    uvicorn.run(app, host=settings.serve_host, port=settings.serve_port, log_level="info")

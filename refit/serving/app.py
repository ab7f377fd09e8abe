"""``refit serve``: a FastAPI app that always serves the current champion, verified, and the
candidate of a live rollout beside it.

The champion, the candidate and their hot reloads are :mod:`refit.serving.follower`'s; which
model answers a request, the other's shadow scoring and the per-model evidence are
:mod:`refit.serving.router`'s; the micro-batching is :mod:`refit.serving.batching`'s; the
prediction log is :mod:`refit.serving.predlog`'s; the routes, their limits and auth are
:mod:`refit.serving.routes`' (batches and texts are bounded; predict, explain and reload need the
bearer token). Here: the app assembled from them (:func:`create_app`), the refusal to start
without a token unless told ``no_auth``, the error handlers (a bad body is a 422 with the reason,
never a 500), the request metrics' middleware, the lifespan with its pointer watcher threads
(champion and candidate), and :func:`serve`.

Every prediction names the version that made it (``model_version``, per prediction and for the
request), in every mode, so that a response in shadow is byte for byte the response without a
candidate.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime.
import logging
import threading
import time
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from refit.core.errors import ConfigError, RefitError
from refit.data.db import engine_for
from refit.serving.follower import Candidate, Champion, Follower
from refit.serving.predlog import PredictionLog
from refit.serving.router import Router
from refit.serving.routes import health, models
from refit.serving.routes import metrics as metrics_routes
from refit.serving.routes.explain import explain_routes
from refit.serving.routes.metrics import ServingMetrics
from refit.serving.routes.predict import predict_routes

log = logging.getLogger("refit.serve")
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

    The app's parts go on ``app.state`` (``settings``, ``token``, ``champion``, ``candidate``,
    ``router``, ``batcher``, ``prediction_log``, ``metrics``), where the routes of
    :mod:`refit.serving.routes`, the middleware and the lifespan find them.

    Args:
        settings: the settings.
        champion: the loaded champion (default: one made from ``settings``).
        no_auth: serve without a bearer token when ``REFIT_SERVE_TOKEN`` is not set (warned about).
        candidate: the candidate follower (default: one on the champion's store, checked as soon
            as the app starts and then every ``REFIT_ROLLOUT_POLL_S`` seconds).

    Returns:
        The app, its routes, error handlers, request metrics and lifespan in place.

    Raises:
        ConfigError: no token is set and ``no_auth`` was not given.
    """
    token = serve_token(settings, no_auth)
    if token is None:
        log.warning(NO_AUTH_WARNING, settings.serve_host, settings.serve_port)
    champion = champion or Champion(settings)
    candidate = candidate or Candidate(settings, champion.store)
    metrics = ServingMetrics()
    prediction_log = _prediction_log(settings)
    router = Router(settings, champion, candidate, prediction_log, metrics.models)

    app = FastAPI(title="refit", summary="The current champion satisfaction model.", lifespan=lifespan)
    app.state.settings, app.state.token, app.state.metrics = settings, token, metrics
    app.state.champion, app.state.batcher, app.state.prediction_log = champion, router.champion_batcher, prediction_log
    app.state.candidate, app.state.router = candidate, router
    app.state.stop_watching = threading.Event()
    add_error_handlers(app)
    app.middleware("http")(measure_requests)
    app.include_router(predict_routes(settings.serve_max_items))
    app.include_router(explain_routes(settings.serve_max_items))
    app.include_router(models.routes)
    app.include_router(health.routes)
    app.include_router(metrics_routes.routes)
    return app


def _prediction_log(settings) -> PredictionLog | None:
    """The prediction log, or None without a database.

    A live rollout logs both models' predictions whatever REFIT_SERVE_LOG_PREDICTIONS says (its
    evidence); the log is ready whenever a database is configured, and written only then.
    """
    if settings.serve_log_predictions or settings.database_url:
        return PredictionLog(engine_for(settings), settings.serve_log_flush_s)
    return None


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The app's life: the router's batchers, the pointer watchers (champion and candidate) and
    the prediction log start with it, and stop with it."""
    state, settings = app.state, app.state.settings
    await state.router.start()
    watchers = [
        threading.Thread(
            target=watch,
            args=(state.champion, settings.serve_poll_s, False, state.stop_watching),
            name="refit-pointer-watch",
        ),
        threading.Thread(
            target=watch,
            args=(state.candidate, settings.rollout_poll_s, True, state.stop_watching),
            name="refit-candidate-watch",
        ),
    ]
    for watcher in watchers:
        watcher.daemon = True
        watcher.start()
    if state.prediction_log:
        state.prediction_log.start()
    yield
    state.stop_watching.set()
    await state.router.stop()
    if state.prediction_log:
        state.prediction_log.stop()


def watch(follower: Follower, interval: float, at_once: bool, stop: threading.Event) -> None:
    """Keep a follower's model in step with its pointer, on a thread of its own.

    A failed check is logged, and the next one tries again.

    Args:
        follower: the champion or the candidate.
        interval: seconds between checks.
        at_once: check once at the start too.
        stop: set when the app stops.
    """
    if at_once:
        _check(follower)
    while not stop.wait(interval):
        _check(follower)


def _check(follower: Follower) -> None:
    try:
        follower.refresh()
    except Exception as exc:  # the store is down: keep serving, try again later
        log.warning("%s pointer check failed: %s", type(follower).__name__.lower(), exc)


def add_error_handlers(app: FastAPI) -> None:
    """Make every bad body a 422 in the documented shape, never a 400 or a 500."""
    app.add_exception_handler(StarletteHTTPException, _body_errors_are_422)
    app.add_exception_handler(RequestValidationError, _invalid_bodies_are_422)


async def _body_errors_are_422(request: Request, exc: StarletteHTTPException):
    # A body that is not even decodable (invalid UTF-8 declared as JSON) is a bad body like
    # any other: a 422 in the documented shape, not Starlette's undocumented 400.
    if exc.status_code == 400:
        error = {"type": "json_invalid", "loc": ("body",), "msg": f"the body cannot be read: {exc.detail}"}
        return await request_validation_exception_handler(request, RequestValidationError([error]))
    return await http_exception_handler(request, exc)


async def _invalid_bodies_are_422(request: Request, exc: RequestValidationError):
    # FastAPI echoes the offending input; raw bytes that are not UTF-8 (a body sent without a
    # content type) would make its own handler fail with a 500.
    errors = [
        {**e, "input": e["input"].decode("utf-8", "replace")} if isinstance(e.get("input"), bytes) else e
        for e in exc.errors()
    ]
    return await request_validation_exception_handler(request, RequestValidationError(errors))


async def measure_requests(request: Request, call_next):
    """The app's middleware: every request counted and timed, by route template (``/metrics``)."""
    started = time.perf_counter()
    response = await call_next(request)
    request.app.state.metrics.measure(request, response.status_code, time.perf_counter() - started)
    return response


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

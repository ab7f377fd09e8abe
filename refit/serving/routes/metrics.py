"""``GET /metrics``: Prometheus' text format, from the app's own registry.

Requests are counted and timed by route template (:meth:`ServingMetrics.measure`, from the app's
middleware), so unknown paths cannot grow the series; the models' series (reloads, the version
served, the candidate's share, the per-model calls) are set from the followers when scraped.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match

from refit.serving.follower import Candidate, Champion
from refit.serving.router import ModelMetrics
from refit.serving.routes.shared import CandidateDep, ChampionDep

UNMATCHED = "unmatched"  # the one metrics label of every path no route serves (scans, typos)


class ServingMetrics:
    """The app's Prometheus series, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        self.requests = Counter(
            "refit_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=registry
        )
        self.latency = Histogram("refit_request_seconds", "Request latency", ["endpoint"], registry=registry)
        self.reloads = Gauge("refit_model_reloads", "Model swaps since start", registry=registry)
        self.failures = Gauge("refit_model_reload_failures", "Versions refused since start", registry=registry)
        self.info = Gauge("refit_model_info", "The version being served", ["version"], registry=registry)
        self.candidate_info = Gauge(
            "refit_candidate_info",
            "The candidate in live rollout: its canary share",
            ["version", "stage"],
            registry=registry,
        )
        self.candidate_failures = Gauge(
            "refit_candidate_reload_failures", "Candidates refused since start", registry=registry
        )
        self.models = ModelMetrics(registry)

    def measure(self, request: Request, status: int, seconds: float) -> None:
        """Count and time one request under its route's template.

        Args:
            request: the request (its scope says which route served it).
            status: the response's status code.
            seconds: how long the app took to answer.
        """
        endpoint = route_of(request)
        self.latency.labels(endpoint).observe(seconds)
        self.requests.labels(endpoint, str(status)).inc()

    def render(self, champion: Champion, candidate: Candidate) -> str:
        """The registry in Prometheus' text format, the models' series set from the followers first.

        Args:
            champion: the champion follower.
            candidate: the candidate follower.

        Returns:
            The exposition text.
        """
        self.reloads.set(champion.reloads)
        self.failures.set(champion.reload_failures)
        self.candidate_failures.set(candidate.reload_failures)
        self.info.clear()
        if champion.current:
            self.info.labels(champion.current.version).set(1)
            self.models.calls("champion", champion.current)
        self.candidate_info.clear()
        if candidate.current:
            rollout = candidate.current.rollout
            self.candidate_info.labels(candidate.current.version, rollout.stage).set(rollout.share)
            self.models.calls("candidate", candidate.current)
        return generate_latest(self.registry).decode()


def route_of(request: Request) -> str:
    """The template of the route that served ``request``, not its raw path: a scan of random URLs
    must not add series. A partial match (the path of a route, another method: a 405) is that
    route too; a path no route serves is :data:`UNMATCHED`.

    Asked once the response is made: FastAPI records the route it matched in the request's scope
    (a route of an included router is found only so); the app's own routes (``/docs``,
    ``/openapi.json``) are matched here.
    """
    route = request.scope.get("route")
    if route is not None:
        return getattr(route, "path", UNMATCHED)
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            return getattr(route, "path", UNMATCHED)
    return UNMATCHED


routes = APIRouter()


@routes.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request, champion: ChampionDep, candidate: CandidateDep) -> PlainTextResponse:
    """Prometheus metrics: requests by route and status, latency, and per model calls, errors and shadow pairs."""
    text = request.app.state.metrics.render(champion, candidate)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

"""``GET /healthz`` (the process answers) and ``GET /readyz`` (a model is loaded); no token needed."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
from fastapi import APIRouter, HTTPException

from refit.serving.bodies import ErrorBody
from refit.serving.routes.shared import ChampionDep

routes = APIRouter()


@routes.get("/healthz")
async def healthz() -> dict:
    """Liveness: the process answers (open, no token)."""
    return {"status": "ok"}


@routes.get("/readyz", responses={503: {"model": ErrorBody, "description": "No model loaded yet."}})
async def readyz(champion: ChampionDep) -> dict:
    """Readiness: 200 once a champion is loaded, 503 before (open, no token)."""
    if champion.current is None:
        raise HTTPException(503, "no model loaded yet")
    return {"status": "ready", "model_version": champion.current.version}

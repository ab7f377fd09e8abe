"""The served models: ``POST /reload`` reads both pointers now, ``GET /version`` says what serves.

The champion and the candidate of a live rollout are :mod:`refit.serving.follower`'s; their
pointers are also read by the app's watcher threads (:func:`refit.serving.app.lifespan`).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
import asyncio

from fastapi import APIRouter, Depends, HTTPException

from refit.core.errors import RefitError
from refit.serving.bodies import ErrorBody
from refit.serving.routes.shared import UNAUTHORIZED, CandidateDep, ChampionDep, RouterDep, authorized

STORE_AWAY = {503: {"model": ErrorBody, "description": "The store cannot be read now."}}

routes = APIRouter()


@routes.post("/reload", dependencies=[Depends(authorized)], responses={**UNAUTHORIZED, **STORE_AWAY})
async def reload(champion: ChampionDep, candidate: CandidateDep) -> dict:
    """Check the champion and candidate pointers now; 503 while the store cannot be read."""
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


@routes.get("/version")
async def version(champion: ChampionDep, candidate: CandidateDep, router: RouterDep) -> dict:
    """The version served, its reloads and refusals, model calls, the candidate and the shadow work."""
    current = champion.current
    return {
        "model_version": current and current.version,
        "loaded_at": current and current.loaded_at,
        "reloads": champion.reloads,
        "reload_failures": champion.reload_failures,
        "last_error": champion.last_error,
        "quantized": bool(current and getattr(current.predictor, "quantization_gap", None) is not None),
        "model_calls": router.champion_batcher.calls,
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

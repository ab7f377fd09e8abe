"""``POST /explain``: which words (and features) moved the champion's prediction, item by item.

Explanations are optional in a build: without them the app still starts, and this route answers 501.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
import asyncio
from dataclasses import asdict

from fastapi import APIRouter, Depends, HTTPException

from refit.serving.bodies import ErrorBody, feature_error, request_model
from refit.serving.routes.shared import UNAUTHORIZED, ChampionDep, SettingsDep, authorized

# Explanations cost a model call per word: a request holds at most this many items.
MAX_EXPLAIN_ITEMS = 8
NOT_IN_BUILD = {501: {"model": ErrorBody, "description": "Explanations are not in this build."}}


def explain_routes(max_items: int) -> APIRouter:
    """The ``/explain`` route, its body bounded to ``max_items`` items or :data:`MAX_EXPLAIN_ITEMS`.

    Args:
        max_items: the most items one request may carry (``REFIT_SERVE_MAX_ITEMS``).

    Returns:
        The router to include in the app.
    """
    routes = APIRouter()
    ExplainRequest = request_model("ExplainRequest", min(MAX_EXPLAIN_ITEMS, max_items))  # noqa: N806 - a class

    @routes.post("/explain", dependencies=[Depends(authorized)], responses={**UNAUTHORIZED, **NOT_IN_BUILD})
    async def explain(body: ExplainRequest, settings: SettingsDep, champion: ChampionDep) -> dict:
        """Token and feature attributions per item (integrated gradients); an ensemble's are its members' mean."""
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

    return routes

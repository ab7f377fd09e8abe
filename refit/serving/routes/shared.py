"""What the routes share: the bearer-token check, and the app's state as FastAPI dependencies.

The app keeps its parts on ``app.state`` (:func:`refit.serving.app.create_app` puts them there);
a route asks for the ones it needs with ``Depends``, never through a closure over the app.
"""

# No `from __future__ import annotations`: FastAPI reads the dependencies' annotations at runtime.
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from refit.core.settings import Settings
from refit.serving.bodies import ErrorBody
from refit.serving.follower import Candidate, Champion
from refit.serving.router import Router

UNAUTHORIZED = {401: {"model": ErrorBody, "description": "Missing or wrong bearer token."}}


def authorized(request: Request) -> None:
    """Refuse a request without the app's bearer token (none is asked when the app has no token).

    Args:
        request: the request; its app's ``state.token`` is the token to match.

    Raises:
        HTTPException: 401, the ``Authorization`` header is missing or holds another token.
    """
    token = request.app.state.token
    if token is None:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _champion(request: Request) -> Champion:
    return request.app.state.champion


def _candidate(request: Request) -> Candidate:
    return request.app.state.candidate


def _router(request: Request) -> Router:
    return request.app.state.router


# The app's parts, as a route's parameters: ``champion: ChampionDep`` and so on.
SettingsDep = Annotated[Settings, Depends(_settings)]
ChampionDep = Annotated[Champion, Depends(_champion)]
CandidateDep = Annotated[Candidate, Depends(_candidate)]
RouterDep = Annotated[Router, Depends(_router)]

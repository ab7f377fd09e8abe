"""``POST /predict``: the served model's predictions, each naming the version that made it.

Which model answers (the champion, or a canary's candidate) and the other's shadow scoring are
:class:`refit.serving.router.Router`'s; here: the body, the text limit and the response's shape.
A response in shadow is byte for byte the response without a candidate.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
from fastapi import APIRouter, BackgroundTasks, Depends

from refit.serving.bodies import feature_error, request_model
from refit.serving.router import Answer
from refit.serving.routes.shared import UNAUTHORIZED, RouterDep, SettingsDep, authorized


def predict_routes(max_items: int) -> APIRouter:
    """The ``/predict`` route, its body bounded to ``max_items`` items (in the OpenAPI schema too).

    Args:
        max_items: the most items one request may carry (``REFIT_SERVE_MAX_ITEMS``).

    Returns:
        The router to include in the app.
    """
    routes = APIRouter()
    PredictRequest = request_model("PredictRequest", max_items)  # noqa: N806 - a class

    @routes.post("/predict", dependencies=[Depends(authorized)], responses=UNAUTHORIZED)
    async def predict(
        body: PredictRequest, background: BackgroundTasks, settings: SettingsDep, router: RouterDep
    ) -> dict:
        """A satisfaction score (or a label and its probabilities) per item, whether its text was cut, and
        the version that answered."""
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
        return predictions(answer, truncated)

    return routes


def predictions(answer: Answer, truncated: list[bool]) -> dict:
    """The response body of ``/predict``: a label and its probabilities (or a satisfaction score)
    per item, whether its text was cut, and the version that answered.

    Args:
        answer: the router's answer to the request.
        truncated: per item, whether its text was cut to ``REFIT_SERVE_MAX_TEXT_CHARS``.

    Returns:
        ``{"predictions": [...], "model_version": ...}``.
    """
    loaded = answer.loaded
    out = []
    for record, cut in zip(answer.records, truncated, strict=True):
        probabilities = {k[2:]: v for k, v in record.items() if k.startswith("p_")}
        row = {"label": record["prediction"], "probabilities": probabilities}
        if loaded.predictor.task == "regression":
            row = {"satisfaction": record["prediction"]}
        out.append({**row, "truncated": cut, "model_version": loaded.version})
    return {"predictions": out, "model_version": loaded.version}

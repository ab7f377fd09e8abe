"""A first run never leaves the user with nothing: when the BERT cannot beat TF-IDF, the better of
the two becomes the champion (a real checkpoint of kind ``tfidf`` or ``blend``), and predict,
serve and drift work with it. The next challenger must beat it to replace it."""

import json

import httpx
import pytest

from refit.data.db import get_engine
from refit.data.ingest import ingest_file
from refit.data.validate import IngestRules
from refit.flows.retrain import describe_run, retrain
from refit.models.checkpoint import read_metadata
from refit.models.predict import Predictor
from refit.ops.synth import generate_feedback, write_feedback
from refit.registry.pointer import read_pointer
from refit.registry.store import open_store
from refit.registry.table import champion
from refit.registry.versions import checkout
from refit.serving.app import create_app
from refit.serving.follower import Champion

from helpers import refit_cli, serving

pytestmark = pytest.mark.integration


def ingest(settings, rows, path):
    return ingest_file(
        get_engine(settings.database_url), write_feedback(rows, path), IngestRules.from_settings(settings)
    )


@pytest.fixture
def weak_bert(refit_env, monkeypatch):
    """The tiny random BERT for one epoch at a tiny learning rate: it cannot beat TF-IDF on
    reviews whose words carry the rating. The first gate judges against both baselines."""
    monkeypatch.setenv("REFIT_GATE_FIRST_BASELINES", "trivial,tfidf")
    monkeypatch.setenv("REFIT_EPOCHS", "1")
    monkeypatch.setenv("REFIT_LEARNING_RATE", "1e-6")
    from refit.core.settings import load_settings

    return load_settings()


def test_a_first_bert_that_loses_to_tfidf_still_leaves_a_tfidf_champion_that_serves(
    prefect_api, weak_bert, monkeypatch, tmp_path
):
    monkeypatch.setenv("REFIT_BLEND_TEXT_BASELINE", "false")  # a plain BERT challenger, no blend
    settings = weak_bert.with_overrides(blend_text_baseline=False)
    engine = get_engine(settings.database_url)
    ingest(settings, generate_feedback(500, seed=3, id_prefix="first"), tmp_path / "first.csv")

    first = retrain()
    assert first["outcome"] == "promoted", first["gate"]["reason"]
    gate = first["gate"]
    assert (gate["fallback"], gate["kind"]) == ("tfidf", "tfidf")
    assert not gate["comparisons"]["tfidf"]["passed"]  # the BERT did lose to TF-IDF
    assert gate["comparisons"]["trivial (fallback)"]["passed"]  # and TF-IDF beats the trivial predictor
    assert "promote tfidf as the first champion" in gate["reason"]
    assert "model kind: tfidf" in describe_run(first)
    v1 = first["version"]
    assert champion(engine)["version"] == v1
    store = open_store(settings.store_url)
    assert read_pointer(store)["version"] == v1

    # a real checkpoint: manifest-verified on load, its kind and the reason recorded
    folder = checkout(settings, v1)
    meta = read_metadata(folder)
    assert meta["kind"] == "tfidf" and meta["blend"]["bert_weight"] == 0.0
    assert "did not beat every baseline" in meta["blend"]["reason"]
    assert "- kind: tfidf" in (folder / "MODEL_CARD.md").read_text()
    predictor = Predictor(folder)
    assert predictor.kind == "tfidf"
    listed = json.loads(refit_cli("models", "--json").stdout)
    assert [(m["version"], m["metrics"]["kind"], m["is_champion"]) for m in listed] == [(v1, "tfidf", True)]

    # refit predict
    to_score = write_feedback(generate_feedback(6, seed=99, id_prefix="score"), tmp_path / "score.csv")
    scored = refit_cli("predict", str(to_score), "--output", str(tmp_path / "scored.jsonl"))
    assert scored.returncode == 0, scored.stderr
    rows = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= r["satisfaction"] <= 1 and r["model_version"] == v1 for r in rows)

    # refit serve's app, over real HTTP
    serve_settings = settings.with_overrides(serve_token="t0ken", work_dir=str(tmp_path / "serve"))
    follower = Champion(serve_settings)
    follower.refresh()
    with serving(create_app(serve_settings, follower)) as url:
        response = httpx.post(
            f"{url}/predict",
            json={"items": [{"text": "great food, lovely staff"}, {"text": "awful, cold and rude"}]},
            headers={"Authorization": "Bearer t0ken"},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == v1
    predictions = [item["satisfaction"] for item in body["predictions"]]
    assert len(predictions) == 2 and predictions[0] > predictions[1]

    # refit drift, on newly arrived (shifted) feedback, with the TF-IDF champion
    ingest(settings, generate_feedback(300, seed=4, shifted=True, id_prefix="later"), tmp_path / "later.csv")
    drift = refit_cli("drift", "--json")
    assert drift.returncode == 0, drift.stderr
    checked = json.loads(drift.stdout)
    assert checked["decision"] in ("retrain", "no_drift")
    # the TF-IDF champion's quality is realized on the labelled rows and estimated on all of them
    quality = {s["column"]: s for s in checked["signals"] if s["group"] in ("performance", "estimated_performance")}
    assert quality["estimated_performance"]["detail"]["labelled_rows"] == 300, quality["estimated_performance"]
    assert quality["estimated_performance"]["detail"]["realized"] is not None

    # the next challenger must beat the TF-IDF champion itself to replace it
    second = retrain(force=True)
    assert second["gate"]["against"] == "champion"
    assert second["outcome"] in ("promoted", "rejected")
    if second["outcome"] == "rejected":
        assert champion(engine)["version"] == v1


def test_a_blended_first_model_is_never_below_tfidf_on_the_dev_set(prefect_api, weak_bert, tmp_path):
    settings = weak_bert
    ingest(settings, generate_feedback(500, seed=5, id_prefix="first"), tmp_path / "first.csv")
    first = retrain()
    assert first["outcome"] == "promoted", first["gate"]["reason"]
    gate = first["gate"]
    assert gate["kind"] in ("bert", "blend", "tfidf")  # bert: the mix did not beat it on the fold
    metric = gate["metric"]  # mse here: lower is better
    served = gate["metrics"].get("champion candidate", gate["metrics"]["challenger"])[metric]
    assert served <= gate["metrics"]["tfidf"][metric] + 1e-12

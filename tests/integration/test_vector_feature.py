"""A precomputed embedding column end to end on the real services: JSONL, Parquet and CSV
ingest into Postgres (bad vectors quarantined with the reason), the retrain flow fuses it into
the champion, and `refit predict` and `/predict` over HTTP read it; rows without it still work."""

import json

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.data.ingest import ingest
from refit.data.quarantine import requeue_quarantine
from refit.data.validate import IngestRules
from refit.flows.retrain import retrain
from refit.models.checkpoint import read_metadata
from refit.ops.synth import generate_feedback, write_feedback
from refit.registry.versions import checkout
from refit.serving.app import create_app
from refit.serving.follower import Champion
from refit.serving.scoring import score_file

from helpers import quarantine_reasons, refit_cli, serving

pytestmark = pytest.mark.integration
DIM = 4


def with_vectors(rows: list[dict], seed: int, missing_every: int = 10) -> list[dict]:
    """The rows with an item embedding whose first entry follows the rating; every
    ``missing_every``-th row has none."""
    rng = np.random.default_rng(seed)
    out = []
    for i, row in enumerate(rows):
        vector = [(row["rating"] - 3) / 2, *rng.normal(0, 0.3, DIM - 1)]
        out.append({**row, "item_vec": None if i % missing_every == 0 else [round(float(v), 4) for v in vector]})
    return out


def stored_vectors(engine) -> dict[str, list | None]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT feedback_id, features -> 'item_vec' FROM feedback")).all()
    return dict(rows)


def quarantine_details(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT feedback_id, detail FROM quarantine WHERE reason = 'bad_feature'")).all())


def test_a_vector_column_goes_through_ingest_training_predict_and_serve(prefect_api, refit_env, monkeypatch, tmp_path):
    monkeypatch.setenv("REFIT_VECTOR_FEATURE", "item_vec")
    settings = load_settings()
    engine = get_engine(settings.database_url)
    rules = IngestRules.from_settings(settings)

    # --- ingest: JSONL (lists), with bad vectors beside good ones
    rows = with_vectors(generate_feedback(400, seed=5, id_prefix="v"), seed=5)
    bad = {
        "v-5-0000001": [1.0, 2.0],  # ragged
        "v-5-0000002": [0.1, "high", 0.3, 0.4],  # not a number
        "v-5-0000003": [0.1, float("nan"), 0.3, 0.4],  # NaN (Python's JSON writes it, and reads it)
    }
    for row in rows:
        row["item_vec"] = bad.get(row["feedback_id"], row["item_vec"])
    summary = ingest(engine, write_feedback(rows, tmp_path / "feedback.jsonl"), rules)
    assert (summary.accepted, summary.quarantined) == (397, 3)
    assert quarantine_reasons(engine) == {"bad_feature": 3}
    assert quarantine_details(engine) == {
        "v-5-0000001": "feature item_vec has 2 values, expected 4",
        "v-5-0000002": "feature item_vec has an entry that is not a number",
        "v-5-0000003": "feature item_vec has a NaN or infinite entry",
    }
    vectors = stored_vectors(engine)
    assert vectors["v-5-0000004"] == rows[4]["item_vec"]
    assert vectors["v-5-0000000"] is None  # a row without the vector is stored without it
    with engine.connect() as conn:
        behaviour = conn.execute(text("SELECT features FROM feedback WHERE feedback_id = 'v-5-0000004'")).scalar()
    assert {"category", "device", "sessions_7d", "item_vec"} <= set(behaviour)

    # --- Parquet (a list column) and CSV (a JSON array in the cell); the stored length is kept
    more = with_vectors(generate_feedback(4, seed=6, id_prefix="p"), seed=6, missing_every=99)
    more[3]["item_vec"] = [0.1, 0.2, 0.3]
    pd.DataFrame(more).to_parquet(tmp_path / "more.parquet")
    summary = ingest(engine, tmp_path / "more.parquet", rules)
    assert (summary.accepted, summary.quarantined) == (3, 1)
    assert quarantine_details(engine)["p-6-0000003"] == "feature item_vec has 3 values, expected 4"
    csv_rows = with_vectors(generate_feedback(2, seed=7, id_prefix="c"), seed=7, missing_every=99)
    for row in csv_rows:
        row["item_vec"] = json.dumps(row["item_vec"])
    assert ingest(engine, write_feedback(csv_rows, tmp_path / "more.csv"), rules).accepted == 2
    assert stored_vectors(engine)["c-7-0000000"] == json.loads(csv_rows[0]["item_vec"])

    # --- training: the real retrain flow fuses the vector into the champion
    first = retrain()
    assert first["outcome"] == "promoted", first
    version = first["version"]
    meta = read_metadata(checkout(settings, version))
    assert (meta["features"]["vector"], meta["features"]["vector_dim"]) == ("item_vec", DIM)
    assert meta["train_config"]["vector_feature"] == "item_vec"
    assert meta["architecture"]["head"] == "gated_fusion"

    # --- `refit predict` on a JSONL file with the vector (and a row without it)
    to_score = [
        {"feedback_id": "s-1", "text": "Great kettle, works well.", "item_vec": [1.0, 0.0, 0.0, 0.0]},
        {"feedback_id": "s-2", "text": "Great kettle, works well.", "item_vec": [-1.0, 0.0, 0.0, 0.0]},
        {"feedback_id": "s-3", "text": "Great kettle, works well."},
    ]
    path = tmp_path / "score.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in to_score))
    scored = refit_cli("predict", str(path), "--output", str(tmp_path / "scored.jsonl"))
    assert scored.returncode == 0, scored.stderr
    out = {r["feedback_id"]: r for r in map(json.loads, (tmp_path / "scored.jsonl").read_text().splitlines())}
    assert set(out) == {"s-1", "s-2", "s-3"}
    assert all(0 <= r["satisfaction"] <= 1 and r["model_version"] == version for r in out.values())
    assert out["s-1"]["satisfaction"] != pytest.approx(out["s-2"]["satisfaction"], abs=1e-6)  # the vector is read
    # a CSV file carries it as a JSON array in the cell, with the same result (what the command runs)
    pd.DataFrame(to_score[:1]).assign(item_vec=json.dumps(to_score[0]["item_vec"])).to_csv(
        tmp_path / "score.csv", index=False
    )
    score_file(settings, tmp_path / "score.csv", tmp_path / "scored.csv")
    assert pd.read_csv(tmp_path / "scored.csv")["satisfaction"].tolist() == pytest.approx([out["s-1"]["satisfaction"]])

    # --- `/predict` over HTTP with the vector, without it, and with the wrong length
    champion = Champion(settings)
    champion.refresh()
    with serving(create_app(settings, champion, no_auth=True)) as url:  # the features are tested here, not auth

        def predict(items):
            return httpx.post(f"{url}/predict", json={"items": items}, timeout=60)

        response = predict(
            [
                {"text": "Great kettle, works well.", "features": {"item_vec": [1.0, 0.0, 0.0, 0.0]}},
                {"text": "Great kettle, works well.", "features": {"item_vec": [-1.0, 0.0, 0.0, 0.0]}},
                {"text": "Great kettle, works well."},
            ]
        )
        assert response.status_code == 200, response.text
        served = [p["satisfaction"] for p in response.json()["predictions"]]
        assert served == pytest.approx([out[fid]["satisfaction"] for fid in ("s-1", "s-2", "s-3")])
        wrong = predict([{"text": "fine", "features": {"item_vec": [1.0, 2.0]}}])
        assert wrong.status_code == 422
        assert "has 2 values, expected 4" in wrong.text


def test_vectors_quarantined_before_the_setting_are_requeued_after_it(db_url, monkeypatch, tmp_path):
    engine = get_engine(db_url)
    rows = with_vectors(generate_feedback(20, seed=8, id_prefix="q"), seed=8, missing_every=99)
    rows[5]["item_vec"] = [1.0, 2.0]  # ragged: stays in quarantine
    path = write_feedback(rows, tmp_path / "feedback.jsonl")
    summary = ingest(engine, path, IngestRules.from_settings(load_settings(database_url=db_url)))
    assert (summary.accepted, summary.quarantined) == (1, 19)  # the first row has no vector
    assert all("REFIT_VECTOR_FEATURE" in detail for detail in quarantine_details(engine).values())

    monkeypatch.setenv("REFIT_VECTOR_FEATURE", "item_vec")
    result = requeue_quarantine(engine, load_settings(database_url=db_url))
    assert (result["requeued"], result["accepted"], result["still_quarantined"]) == (18, 18, 1)
    assert stored_vectors(engine)["q-8-0000001"] == rows[1]["item_vec"]
    with engine.connect() as conn:
        left = conn.execute(text("SELECT raw -> 'item_vec' FROM quarantine WHERE requeued_at IS NULL")).scalars().all()
    assert left == [[1.0, 2.0]]  # the ragged one stays quarantined

"""The whole loop end to end on the real services: Postgres, moto S3 over HTTP, a Prefect API,
and a Slack receiver. The tiny BERT keeps it fast."""

import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from sqlalchemy import text

from refit.data.db import get_engine
from refit.data.ingest import ingest_file
from refit.data.snapshots import SplitConfig, split_of
from refit.data.validate import IngestRules
from refit.flows.retrain import retrain
from refit.ops.synth import generate_feedback, write_feedback
from refit.registry.layout import POINTER, model_prefix
from refit.registry.pointer import read_pointer
from refit.registry.store import open_store
from refit.registry.table import champion

from helpers import count, refit_cli

pytestmark = pytest.mark.integration


def ingest(settings, rows, path):
    return ingest_file(
        get_engine(settings.database_url), write_feedback(rows, path), IngestRules.from_settings(settings)
    )


def registry_rows(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM model_versions ORDER BY created_at")).mappings()]


def test_first_run_promotes_then_shift_is_detected_and_gated(prefect_api, refit_env, slack, tmp_path):
    settings = refit_env
    engine = get_engine(settings.database_url)
    store = open_store(settings.store_url)

    ingest(settings, generate_feedback(800, seed=1, id_prefix="before"), tmp_path / "before.csv")
    first = retrain()
    assert first["outcome"] == "promoted"
    assert first["gate"]["against"] == "baseline"
    assert first["gate"]["improvement"] > 0
    v1 = first["version"]
    # the store holds the checkpoint, its manifest, and the pointer
    assert read_pointer(store)["version"] == v1
    manifest = json.loads(store.get(f"{model_prefix(v1)}/manifest.json"))
    assert {"model.safetensors", "config.json", "refit.json", "MODEL_CARD.md"} <= set(manifest["files"])
    card = store.get(f"{model_prefix(v1)}/MODEL_CARD.md").decode()
    assert "## Intended use" in card and "## Known limits" in card and f"PROMOTE challenger `{v1}`" in card
    # the operator's view in the Prefect UI: the gate's table as an artifact
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gate-decision"])))
    decided = [a.data for a in artifacts if f"PROMOTE challenger `{v1}` vs baseline" in a.data]
    assert decided and "| trivial |" in decided[0] and "95% interval" in decided[0]
    assert champion(engine)["version"] == v1
    assert slack.kinds() == ["retrain_started", "gate", "promoted"]

    # batch scoring with the champion keeps each row's id and names the model version
    to_score = write_feedback(generate_feedback(5, seed=99, id_prefix="score"), tmp_path / "score.csv")
    scored = refit_cli("predict", str(to_score), "--output", str(tmp_path / "scored.jsonl"))
    assert scored.returncode == 0, scored.stderr
    lines = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [row["feedback_id"] for row in lines] == [f"score-99-{i:07d}" for i in range(5)]
    assert all(0 <= row["satisfaction"] <= 1 and row["model_version"] == v1 for row in lines)

    # nothing new: nothing happens
    assert retrain()["outcome"] == "no_new_data"

    ingest(settings, generate_feedback(800, seed=2, shifted=True, id_prefix="after"), tmp_path / "after.jsonl")
    slack.messages.clear()
    second = retrain()
    drift = second["drift"]
    assert drift["decision"] == "retrain"
    assert "text" in drift["drifted_columns"]
    assert second["gate"]["against"] == "champion"
    # the first gate created the dev set; the second snapshot's dev rows joined it as version 2,
    # and the rows newer than the champion decided
    assert first["gate"]["dev_set"] == 1 and second["gate"]["dev_set"] == 2
    with engine.connect() as conn:
        reasons = conn.execute(text("SELECT reason FROM dev_sets ORDER BY version")).scalars().all()
    assert reasons[0].startswith("initial") and reasons[1].startswith(
        f"grown with snapshot {second['snapshot']['id']}: +"
    )
    assert second["gate"]["rule"] == "recent" and "dev rows newer than" in " ".join(second["gate"]["reasons"])
    slices = second["gate"]["slices"]
    assert {"category=books", "length=short"} <= set(slices["challenger"]) & set(slices["champion"])
    assert second["gate"]["champion_score"] is not None
    v2 = second["version"]
    assert v2 != v1
    assert store.exists(f"{model_prefix(v2)}/manifest.json")
    assert store.exists(drift["html_uri"].split(f"{store.bucket}/{store.prefix}/", 1)[1])

    rows = registry_rows(engine)
    assert [r["version"] for r in rows] == [v1, v2]
    assert rows[1]["parent_version"] == v1
    expected_champion = v2 if second["gate"]["promote"] else v1
    assert champion(engine)["version"] == expected_champion
    assert read_pointer(store)["version"] == expected_champion
    with engine.connect() as conn:
        log = conn.execute(text("SELECT decision, challenger_version FROM promotion_log ORDER BY id")).all()
        drift_rows = conn.execute(text("SELECT decision FROM drift_reports ORDER BY id")).scalars().all()
    assert log[0] == ("promoted", v1)
    assert log[1].challenger_version == v2
    assert drift_rows == ["retrain", "retrain"]
    # Slack saw the drift and the gate decision, with both metrics and the version
    # the drift check announced the retrain first; the start, the gate and the outcome followed
    assert slack.kinds() == ["drift", "retrain_started", "gate", second["outcome"]]
    for message in (slack.messages[2]["text"], slack.messages[3]["text"]):
        assert v2 in message
        assert f"{second['gate']['challenger_score']:.4f}" in message
        assert f"{second['gate']['champion_score']:.4f}" in message

    listed = json.loads(refit_cli("models", "--json").stdout)
    assert [(m["version"], m["is_champion"]) for m in listed] == [
        (v2, expected_champion == v2),
        (v1, expected_champion == v1),
    ]
    shown = refit_cli("models", "show", v2)
    assert shown.returncode == 0, shown.stderr
    assert f"lineage: {v2}" in shown.stdout and f"<- {v1}" in shown.stdout
    # against a champion the test is one-sided at 95%: the table shows the 90% interval whose lower end decided
    assert "| vs | challenger mse | reference mse | improvement | 90% interval | passed |" in shown.stdout
    assert "by flow-run " in shown.stdout  # the run that decided is recorded as the actor
    checked = json.loads(refit_cli("drift", "--json").stdout)
    # nothing has arrived since a promoted challenger's snapshot; a kept champion still sees the shift
    assert checked["decision"] == ("insufficient_data" if expected_champion == v2 else "retrain")


def test_shuffled_label_challenger_is_rejected(prefect_api, refit_env, slack, tmp_path, monkeypatch):
    settings = refit_env
    engine = get_engine(settings.database_url)
    store = open_store(settings.store_url)
    ingest(settings, generate_feedback(800, seed=1, id_prefix="clean"), tmp_path / "clean.csv")
    first = retrain()
    assert first["outcome"] == "promoted"
    pointer_before = store.get(POINTER)

    # Same distribution, but the training rows' ratings are shuffled; dev rows keep true labels,
    # so the gate compares on honest data.
    split = SplitConfig.from_settings(settings)
    rows = generate_feedback(800, seed=7, id_prefix="noise")
    train_rows = [r for r in rows if split_of(r["feedback_id"], split) == "train"]
    ratings = [r["rating"] for r in train_rows]
    import random

    random.Random(0).shuffle(ratings)
    for row, rating in zip(train_rows, ratings, strict=True):
        row["rating"] = rating
    ingest(settings, rows, tmp_path / "noise.csv")
    # the challenger learns from the shuffled window only
    monkeypatch.setenv("REFIT_MAX_TRAIN_ROWS", str(len(train_rows)))

    second = retrain(force=True)
    assert second["outcome"] == "rejected"
    assert not second["gate"]["promote"]
    assert store.get(POINTER) == pointer_before
    assert champion(engine)["version"] == first["version"]
    assert count(engine, "model_versions") == 2
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT status FROM model_versions WHERE version = :v"), {"v": second["version"]}
            ).scalar()
            == "rejected"
        )
    assert slack.kinds()[-1] == "rejected"


def test_a_failing_run_posts_to_slack(prefect_api, refit_env, slack, monkeypatch):
    monkeypatch.setenv("REFIT_STORE_URL", "s3://bucket-that-does-not-exist/x")
    ingest(refit_env, generate_feedback(200, seed=1), refit_env.work_dir.parent / "f.csv")
    with pytest.raises(Exception, match="bucket-that-does-not-exist"):
        retrain()
    assert slack.kinds() == ["failure"]
    assert "bucket-that-does-not-exist" in slack.messages[0]["text"]
    # the preflight check failed the run before any training time was spent
    assert not (refit_env.work_dir / "checkpoints").exists()
    assert count(get_engine(refit_env.database_url), "dataset_snapshots") == 0

"""Ensembles (models/ensemble.py): one folder, K weight files, served as the mean of its members."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from refit.core.errors import CheckpointError
from refit.models.checkpoint import build_manifest, verify_folder
from refit.models.ensemble import build_ensemble
from refit.models.predict import Predictor
from refit.models.saving import save_checkpoint
from refit.models.train import train

from model_helpers import review_data, tiny_config


def _members(tiny_model, tmp_path, task, features, k=3):
    data = review_data(120, task=task, features=features)
    folders = []
    for seed in range(k):
        overrides = {"feature_types": {"category": "categorical", "sessions_7d": "numeric"}} if features else {}
        result = train(tiny_config(tiny_model, task=task, epochs=1, seed=seed, **overrides), data)
        folders.append(save_checkpoint(result, tmp_path / f"{task}-{seed}", {"version": f"m{seed}"}))
    return folders, data


@pytest.mark.parametrize(("task", "features"), [("regression", True), ("classification", False)])
def test_ensemble_predicts_the_mean_of_its_members(tiny_model, tmp_path, task, features):
    members, data = _members(tiny_model, tmp_path, task, features)
    folder = build_ensemble(members, tmp_path / "ensemble", {"version": "v-ens"})
    # It loads from its own folder alone, wherever the members' folders went.
    for member in members:
        shutil.rmtree(member)
    moved = shutil.move(folder, tmp_path / "moved")
    ensemble = Predictor(moved)
    frame = data.dev_features
    got = ensemble.predict(data.dev_texts, frame)
    each = np.stack([Predictor(moved / f"members/{i}").predict(data.dev_texts, frame) for i in range(3)])
    assert np.allclose(got, each.mean(axis=0), atol=1e-5)
    assert not np.allclose(each[0], each[1], atol=1e-4)  # the members really differ
    if task == "classification":
        assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)
        assert [r["prediction"] for r in ensemble.to_records(got[:3])] == [
            ensemble.labels[int(np.argmax(p))] for p in got[:3]
        ]
    if features:
        assert set(ensemble.feature_names) == {"category", "sessions_7d"}


def test_manifest_lists_every_member_and_is_verified(tiny_model, tmp_path):
    members, _ = _members(tiny_model, tmp_path, "regression", False, k=2)
    folder = build_ensemble(members, tmp_path / "ensemble", {"version": "v-ens"})
    manifest = build_manifest(folder, "v-ens")
    weights = sorted(name for name in manifest["files"] if name.endswith("model.safetensors"))
    assert weights == ["members/0/model.safetensors", "members/1/model.safetensors"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    verify_folder(folder)
    (folder / "members/1/model.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="members/1/model.safetensors"):
        Predictor(folder)
    with pytest.raises(ValueError, match="at least two"):
        build_ensemble(members[:1], tmp_path / "one", {"version": "x"})


def test_retrain_publishes_a_seeds_ensemble_as_one_gated_version(prefect_api, refit_env, tmp_path, monkeypatch):
    """The flow trains K seeds, gates the ensemble like any challenger, and publishes one version
    whose manifest lists K weight files, the int8 record and the TensorBoard events."""
    from refit.core.settings import load_settings
    from refit.data.db import get_engine
    from refit.data.ingest import ingest_file
    from refit.data.validate import IngestRules
    from refit.flows.retrain import retrain
    from refit.ops.synth import generate_feedback, write_feedback
    from refit.registry.layout import model_prefix
    from refit.registry.store import open_store
    from refit.registry.versions import checkout

    monkeypatch.setenv("REFIT_ENSEMBLE_SIZE", "2")
    monkeypatch.setenv("REFIT_EPOCHS", "2")
    monkeypatch.setenv("REFIT_PUBLISH_INT8", "true")  # the int8 copy of an ensemble is part of what is checked
    settings = load_settings()
    rows = write_feedback(generate_feedback(300, seed=1, id_prefix="ens"), tmp_path / "f.csv")
    ingest_file(get_engine(settings.database_url), rows, IngestRules.from_settings(settings))
    run = retrain()
    assert run["outcome"] == "promoted", run
    manifest = json.loads(open_store(settings.store_url).get(f"{model_prefix(run['version'])}/manifest.json"))
    files = set(manifest["files"])
    assert {
        "members/0/model.safetensors",
        "members/1/model.safetensors",
        "model.int8.onnx",
        "dev_sample.jsonl",
    } <= files
    assert "model.safetensors" not in files  # no stray single model beside the members
    assert any(name.startswith("members/1/tensorboard/events.out.tfevents") for name in files)
    assert manifest["int8"]["max_abs_diff"] <= manifest["int8"]["tolerance"]
    folder = checkout(settings, run["version"])
    meta = json.loads((folder / "refit.json").read_text())
    assert meta["ensemble"]["member_seeds"] == [settings.seed, settings.seed + 1000]
    served = Predictor(folder)
    texts = ["great kettle, works well", "terrible charger, broke after a day"]
    members = [Predictor(folder / f"members/{i}").predict(texts) for i in range(2)]
    # the served ensemble is the members' mean, blended with its TF-IDF model by the recorded weight
    from refit.models.text_baseline import TextBaseline

    weight = meta["blend"]["bert_weight"]
    expected = weight * np.mean(members, axis=0) + (1 - weight) * TextBaseline.load(folder).predict(texts)
    assert np.allclose(served.predict(texts), expected, atol=1e-5)

    # With REFIT_ENSEMBLE_SOURCE=champions the next challenger joins the previous champions; an
    # ensemble champion gives its members.
    from refit.training.challenger import previous_champion_folders

    joined = previous_champion_folders(settings, get_engine(settings.database_url), 1, like=folder / "members/0")
    assert joined == [folder / "members/0"]


@pytest.mark.parametrize(("task", "features"), [("regression", True), ("classification", False)])
def test_explain_on_an_ensemble_champion_is_the_members_mean_attribution_over_http(
    tiny_model, tmp_path, task, features
):
    import httpx

    from refit.core.settings import load_settings
    from refit.models.explain import explain
    from refit.registry.pointer import write_pointer
    from refit.registry.store import open_store
    from refit.registry.versions import publish_checkpoint
    from refit.serving.app import create_app
    from refit.serving.follower import Champion

    from helpers import serving

    members, _ = _members(tiny_model, tmp_path, task, features, k=2)
    folder = build_ensemble(members, tmp_path / "ensemble", {"version": "v-ens"})
    store = open_store((tmp_path / "store").as_uri())
    write_pointer(store, publish_checkpoint(store, folder, "v-ens"), None)
    settings = load_settings(
        store_url=(tmp_path / "store").as_uri(), work_dir=tmp_path / "work", serve_token="t0ken", serve_poll_s=3600
    )
    champion = Champion(settings)
    champion.refresh()
    text = "Terrible kettle, broke after a day."
    item = {"text": text, "features": {"category": "kitchen", "sessions_7d": 3}} if features else {"text": text}
    auth = {"Authorization": "Bearer t0ken"}
    with serving(create_app(settings, champion)) as url:
        response = httpx.post(f"{url}/explain", json={"items": [item]}, headers=auth, timeout=120)
        scored = httpx.post(f"{url}/predict", json={"items": [item]}, headers=auth, timeout=60).json()
    assert response.status_code == 200, response.text
    found = response.json()["explanations"][0]
    assert response.json()["model_version"] == "v-ens"
    assert "terrible" in [w.lower() for w, _ in found["words"]]
    assert abs(found["completeness_error"]) < 0.05
    # the output explained is the ensemble's own answer, for the class it predicts
    prediction = scored["predictions"][0]
    if task == "regression":
        assert found["output"] == pytest.approx(prediction["satisfaction"], abs=1e-4)
    else:
        assert found["target"] == prediction["label"]
        assert found["output"] == pytest.approx(prediction["probabilities"][prediction["label"]], abs=1e-4)
    # and its attributions are the mean of the members', each explained for that target
    each = [
        explain(
            Predictor(folder / f"members/{i}"),
            text,
            item.get("features"),
            label=found["target"] if task == "classification" else None,
        )
        for i in range(2)
    ]
    assert [w for w, _ in found["words"]] == [w for w, _ in each[0].words]
    assert [s for _, s in found["words"]] == pytest.approx(
        [(a[1] + b[1]) / 2 for a, b in zip(each[0].words, each[1].words, strict=True)], abs=1e-5
    )
    if features:
        assert set(found["features"]) == {"category", "sessions_7d"}
        assert found["features"]["sessions_7d"] == pytest.approx(
            (each[0].features["sessions_7d"] + each[1].features["sessions_7d"]) / 2, abs=1e-5
        )

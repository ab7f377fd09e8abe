"""What the Prefect UI shows of a run: the training curve (an image the browser can fetch, and the
per-epoch table) and one summary row per retrain run, read back from the real Prefect API; the
report links a browser can open, fetched from the real S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from refit.core.settings import load_settings
from refit.models.curves import CURVE_FILE, save_training_curve
from refit.notify.links import browser_url, report_link
from refit.registry.layout import model_prefix
from refit.registry.store import store_for
from refit.registry.versions import Published
from refit.tasks.artifacts import (
    CURVE_KEY,
    HISTORY_KEY,
    SUMMARY_KEY,
    history_markdown,
    retrain_summary_artifact,
    summary_line,
    summary_row,
    training_curve_artifact,
)
from refit.training.challenger import Challenger

HISTORY = [
    {"epoch": 1, "train_loss": 0.31, "dev_mse": 0.052},
    {"epoch": 2, "train_loss": 0.12, "dev_mse": 0.021},
    {"epoch": 3, "train_loss": 0.08, "dev_mse": 0.024},
]
SUMMARY = {
    "outcome": "rejected",
    "version": "20261128-010203-abcd",
    "champion": "20261120-000000-beef",
    "drift": {"decision": "retrain", "drifted_columns": ["text", "category"]},
    "gate": {
        "metric": "mse",
        "against": "champion",
        "challenger_score": 0.0123,
        "champion_score": 0.0119,
        "improvement": -0.0004,
        "interval": (-0.0021, 0.0013),
        "failed_slices": ["category=books"],
    },
}


def _artifacts(key: str):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_history_table_marks_the_best_epoch_and_shows_the_image_or_where_it_is():
    with_image = history_markdown("v1", HISTORY, 2, "https://s3.example/curve.png?sig=1", "s3://b/curve.png")
    lines = with_image.splitlines()
    assert "![training curve](https://s3.example/curve.png?sig=1)" in lines
    assert "| epoch | train_loss | dev_mse | best |" in lines
    assert "| 2 | 0.12 | 0.021 | **yes** |" in lines and "| 3 | 0.08 | 0.024 |  |" in lines
    without = history_markdown("v1", HISTORY, 2, None, "file:///srv/store/curve.png")
    assert "![" not in without and "`file:///srv/store/curve.png` (no browser link" in without


def test_summary_row_is_one_line_of_the_run():
    row = summary_row(SUMMARY, "http://ui/runs/flow-run/1")
    assert row["outcome"] == "rejected" and row["drifted"] == "text, category"
    assert row["interval"] == "-0.0021 to +0.0013" and row["failed_slices"] == "category=books"
    assert row["run"] == "http://ui/runs/flow-run/1"
    assert summary_line(row) == (
        "rejected: 20261128-010203-abcd mse 0.0123 vs champion 0.0119; drift retrain; champion 20261120-000000-beef"
    )
    quiet = summary_row({"outcome": "no_new_data"})
    assert summary_line(quiet) == "no_new_data; champion none" and quiet["run"] is None


@pytest.fixture
def checkpoint(tmp_path) -> Challenger:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "refit.json").write_text(json.dumps({"history": HISTORY, "best_epoch": 2}))
    assert save_training_curve(HISTORY, "mse", folder / CURVE_FILE) is not None
    return Challenger("v-test-1", folder, {"mse": 0.021}, 2, 3, 100, 50.0)


def test_training_curve_is_an_image_the_browser_can_fetch_from_s3(prefect_api, s3_bucket, monkeypatch, checkpoint):
    monkeypatch.setenv("REFIT_STORE_URL", f"s3://{s3_bucket}/refit")
    settings = load_settings()
    store = store_for(settings)
    prefix = model_prefix(checkpoint.version, settings.model_name)
    store.put_file(f"{prefix}/{CURVE_FILE}", checkpoint.folder / CURVE_FILE)
    published = Published(checkpoint.version, store.uri(prefix), "sha")

    @flow(name="curve-artifact-test")
    def run():
        return training_curve_artifact(settings, checkpoint, published)

    url = run()
    assert url and url.startswith("http") and "X-Amz-Signature" in url
    fetched = httpx.get(url, timeout=10)
    assert fetched.status_code == 200 and fetched.content == (checkpoint.folder / CURVE_FILE).read_bytes()
    images = [a for a in _artifacts(CURVE_KEY) if a.data == url]
    assert images and images[0].type == "image" and images[0].flow_run_id is not None
    tables = [a for a in _artifacts(HISTORY_KEY) if f"`{checkpoint.version}`" in a.data]
    assert (
        tables and f"![training curve]({url})" in tables[0].data and "| 2 | 0.12 | 0.021 | **yes** |" in tables[0].data
    )


def test_training_curve_on_a_file_store_is_the_table_only(prefect_api, tmp_path, monkeypatch, checkpoint):
    monkeypatch.setenv("REFIT_STORE_URL", f"file://{tmp_path / 'store'}")
    settings = load_settings()
    published = Published(checkpoint.version, f"file://{tmp_path / 'store' / 'v'}", "sha")
    checkpoint.version = "v-test-file"

    @flow(name="curve-artifact-file-test")
    def run():
        return training_curve_artifact(settings, checkpoint, published)

    assert run() is None
    (table,) = [a for a in _artifacts(HISTORY_KEY) if "`v-test-file`" in a.data]
    assert f"`file://{tmp_path / 'store' / 'v'}/{CURVE_FILE}` (no browser link" in table.data


def test_each_retrain_run_leaves_one_summary_row(prefect_api, monkeypatch):
    monkeypatch.setenv("REFIT_UI_URL", "http://prefect.example:4200")
    settings = load_settings()

    @flow(name="summary-artifact-test")
    def run():
        return retrain_summary_artifact(settings, SUMMARY)

    state = run(return_state=True)
    flow_run_id = state.state_details.flow_run_id
    (artifact,) = [a for a in _artifacts(SUMMARY_KEY) if a.flow_run_id == flow_run_id]
    assert artifact.type == "table" and artifact.description.startswith("rejected: 20261128-010203-abcd")
    (row,) = json.loads(artifact.data)
    assert row["outcome"] == "rejected" and row["interval"] == "-0.0021 to +0.0013"
    assert row["run"] == f"http://prefect.example:4200/runs/flow-run/{flow_run_id}"


def test_report_links_open_in_a_browser_when_the_store_can_presign(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("REFIT_STORE_URL", f"s3://{s3_bucket}/refit")
    settings = load_settings()
    store = store_for(settings)
    store.put("reports/drift/1/report.html", b"<html>drift</html>")
    uri = store.uri("reports/drift/1/report.html")
    link = report_link(settings, uri)
    assert link != uri and httpx.get(link, timeout=10).content == b"<html>drift</html>"
    # a file:// report has no browser link: its path is shown as it is
    monkeypatch.setenv("REFIT_STORE_URL", f"file://{tmp_path}")
    file_uri = f"file://{Path(tmp_path) / 'report.html'}"
    assert report_link(load_settings(), file_uri) == file_uri
    assert browser_url(load_settings(), file_uri) is None

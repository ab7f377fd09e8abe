"""`refit serve` as a client sees it: real uvicorn on 127.0.0.1, champions published to the moto S3
server over HTTP, hot reloads under concurrent requests, refused corrupt versions, auth, limits."""

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from refit.core.errors import RefitError
from refit.core.settings import load_settings
from refit.models.predict import Predictor
from refit.models.quantize import quantized
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.registry.layout import model_prefix
from refit.registry.pointer import write_pointer
from refit.registry.store import open_store
from refit.registry.versions import publish_checkpoint
from refit.serving.app import create_app
from refit.serving.follower import Champion

from helpers import free_port, serving
from model_helpers import review_data, tiny_config

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory):
    """Two small trained checkpoints (different seeds), as a training run saves them."""
    data = review_data(240)
    folders = {}
    for version, seed in (("v1", 1), ("v2", 2)):
        result = train(tiny_config(tiny_model, epochs=1, seed=seed), data)
        folders[version] = save_checkpoint(result, tmp_path_factory.mktemp(version), {"version": version})
    return folders


@pytest.fixture
def server(checkpoints, s3_bucket, tmp_path, request):
    """The store holds v1 as champion; a server runs on a free port. Yields (url, store, settings,
    champion). Indirect parameters are extra settings."""

    store = open_store(f"s3://{s3_bucket}/refit")
    published = publish_checkpoint(store, checkpoints["v1"], "v1")
    write_pointer(store, published, None)
    extra = dict(getattr(request, "param", {}))
    if extra.pop("with_database", False):
        extra["database_url"] = request.getfixturevalue("db_url")
    settings = load_settings(
        store_url=f"s3://{s3_bucket}/refit",
        work_dir=tmp_path / "work",
        serve_token=TOKEN,
        serve_poll_s=0.5,
        serve_max_items=16,
        serve_max_text_chars=200,
        serve_batch_wait_ms=20,
        **extra,
    )
    champion = Champion(settings)
    champion.refresh()
    with serving(create_app(settings, champion)) as url:
        yield url, store, settings, champion


def predict(url, texts, headers=AUTH, **extra):
    return httpx.post(
        f"{url}/predict", json={"items": [{"text": t} for t in texts], **extra}, headers=headers, timeout=30
    )


def test_it_serves_the_champion_with_health_version_and_metrics(server):
    url, *_ = server
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json()["model_version"] == "v1"
    response = predict(url, ["The kettle is excellent, love it.", "Terrible, broke after a day."])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "v1"
    assert [set(p) for p in body["predictions"]] == [{"satisfaction", "truncated", "model_version"}] * 2
    assert [p["model_version"] for p in body["predictions"]] == ["v1", "v1"]  # each answer names its model
    assert all(0 <= p["satisfaction"] <= 1 for p in body["predictions"])
    assert httpx.get(f"{url}/version").json()["model_version"] == "v1"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'refit_model_info{version="v1"} 1.0' in metrics
    assert 'refit_requests_total{endpoint="/predict",status="200"} 1.0' in metrics


def test_predict_and_reload_need_the_token_and_health_does_not(server):
    url, *_ = server
    assert predict(url, ["fine"], headers={}).status_code == 401
    assert predict(url, ["fine"], headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{url}/reload").status_code == 401
    assert httpx.get(f"{url}/readyz").status_code == 200


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "items"),
        ({"items": []}, "at least 1"),
        ({"items": [{"text": 5}]}, "valid string"),
        ({"items": [{"text": "ok", "colour": "red"}]}, "Extra inputs"),
        ({"items": [{"text": "ok"}] * 17}, "at most 16 items"),
    ],
)
def test_malformed_bodies_get_422_with_the_reason(server, body, needle):
    url, *_ = server
    response = httpx.post(f"{url}/predict", json=body, headers=AUTH)
    assert response.status_code == 422
    assert needle in response.text


def test_non_json_gets_422_and_long_texts_are_cut_and_flagged(server):
    url, *_ = server
    response = httpx.post(f"{url}/predict", content=b"not json", headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422
    body = predict(url, ["short", "long " * 100]).json()
    assert [p["truncated"] for p in body["predictions"]] == [False, True]


def test_a_hot_reload_under_concurrent_requests_drops_nothing(server, checkpoints):
    url, store, settings, champion = server
    seen, errors, stop = [], [], threading.Event()

    def client():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post(
                        f"{url}/predict", json={"items": [{"text": "works well, happy with it"}]}, headers=AUTH
                    )
                    (seen if r.status_code == 200 else errors).append(r.json().get("model_version") or r.text)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(6)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    write_pointer(store, publish_checkpoint(store, checkpoints["v2"], "v2"), "v1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and champion.current.version != "v2":
        time.sleep(0.1)
    time.sleep(1.0)
    stop.set()
    for c in clients:
        c.join()
    assert errors == []
    assert champion.current.version == "v2"
    first_v2 = seen.index("v2")
    assert "v1" in seen[:first_v2] and set(seen[first_v2:]) == {"v2"}  # switched once, never back
    assert app_calls(url) < len(seen)  # concurrent requests shared model calls


def app_calls(url) -> int:
    return httpx.get(f"{url}/version").json()["model_calls"]


def test_a_corrupt_new_champion_is_refused_and_the_old_one_keeps_serving(server, checkpoints, tmp_path):
    url, store, settings, champion = server
    published = publish_checkpoint(store, checkpoints["v2"], "v2")
    store.put(f"{model_prefix('v2')}/model.safetensors", b"bit rot")
    write_pointer(store, published, "v1")
    response = httpx.post(f"{url}/reload", headers=AUTH, timeout=60).json()
    assert response["changed"] is False
    assert "refused v2" in response["error"] and "model.safetensors" in response["error"]
    assert predict(url, ["fine"]).json()["model_version"] == "v1"
    assert httpx.get(f"{url}/version").json()["reload_failures"] >= 1


def test_the_first_start_with_a_corrupt_champion_exits_with_the_reason(checkpoints, s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/refit")
    write_pointer(store, publish_checkpoint(store, checkpoints["v1"], "v1"), None)
    store.put(f"{model_prefix('v1')}/config.json", b"{}")
    env = {
        **os.environ,
        "REFIT_STORE_URL": f"s3://{s3_bucket}/refit",
        "REFIT_WORK_DIR": str(tmp_path),
        "REFIT_SERVE_PORT": str(free_port()),
        "REFIT_SERVE_TOKEN": TOKEN,
    }
    run = subprocess.run(
        [sys.executable, "-m", "refit.cli", "serve"], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode != 0
    assert "config.json does not match its manifest checksum" in run.stderr.strip().splitlines()[-1]


def test_int8_predictions_stay_within_the_tolerance(checkpoints):
    predictor = Predictor(checkpoints["v1"])
    texts = review_data(120).dev_texts
    quant = quantized(predictor, tolerance=0.05)
    gap = abs(quant.predict(texts) - predictor.predict(texts)).max()
    assert quant.quantization_gap <= 0.05 and gap <= 0.05
    with pytest.raises(RefitError, match="int8 predictions differ"):
        quantized(predictor, tolerance=1e-9)


@pytest.mark.parametrize(
    "server", [{"with_database": True, "serve_log_predictions": True, "serve_log_flush_s": 0.2}], indirect=True
)
def test_predictions_are_logged_in_batches_without_the_text(server, db_url):
    from sqlalchemy import create_engine, text

    url, *_ = server
    for _ in range(3):
        assert predict(url, ["Love it, works well.", "Broke after a day."]).status_code == 200
    engine = create_engine(db_url)
    deadline = time.monotonic() + 20
    rows = []
    while time.monotonic() < deadline and len(rows) < 6:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM prediction_log ORDER BY id")).mappings().all()
        time.sleep(0.2)
    engine.dispose()
    assert len(rows) == 6
    assert {r["model_version"] for r in rows} == {"v1"}
    assert {(r["role"], r["served"], r["rollout_id"], r["error"]) for r in rows} == {("champion", True, None, None)}
    assert len({r["request_id"] for r in rows}) == 3 and all(r["latency_ms"] > 0 for r in rows)
    assert all(0 <= r["satisfaction"] <= 1 and r["text_chars"] > 0 and len(r["text_sha256"]) == 64 for r in rows)
    assert "Love it" not in str([dict(r) for r in rows])  # the text itself is not kept


def test_prediction_logging_keeps_rows_while_the_database_is_away():
    from sqlalchemy import create_engine

    from refit.serving.predlog import PredictionLog

    away = PredictionLog(create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none"), flush_s=60)
    away.add("v1", ["some text"], [{"prediction": 0.7}])
    assert away.flush() == 0
    assert len(away.rows) == 1 and away.written == 0


def test_a_flush_waits_for_the_write_in_progress(db_url):
    """A flush returns once every row queued before it is committed, also the rows the writer
    thread took a moment earlier and is still writing (what a reader of the log relies on)."""
    from sqlalchemy import create_engine, text

    from refit.serving.predlog import PredictionLog

    engine = create_engine(db_url)
    log = PredictionLog(engine, flush_s=60)
    log.add("v1", ["first", "second"], [{"prediction": 0.2}, {"prediction": 0.8}])
    blocker = engine.connect()
    blocker.execute(text("LOCK TABLE prediction_log IN EXCLUSIVE MODE"))  # reads pass, writes wait
    writer = threading.Thread(target=log.flush)  # as the writer thread would, with the rows taken
    writer.start()
    deadline = time.monotonic() + 20
    while log.rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not log.rows  # the writer holds them, blocked by the lock
    release = threading.Timer(0.5, blocker.rollback)
    release.start()
    log.flush()
    with engine.connect() as conn:
        written = conn.execute(text("SELECT count(*) FROM prediction_log")).scalar()
    release.join()
    writer.join(timeout=20)
    blocker.close()
    engine.dispose()
    assert written == 2


def test_explain_returns_token_and_feature_attributions(server):
    url, *_ = server
    response = httpx.post(
        f"{url}/explain", json={"items": [{"text": "Terrible, broke after a day."}]}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    found = response.json()["explanations"][0]
    assert "terrible" in [w.lower() for w, _ in found["words"]]
    assert abs(found["completeness_error"]) < 0.05
    assert response.json()["model_version"] == "v1"


def test_serving_without_a_token_refuses_to_start_with_one_line_naming_the_setting_and_the_flag(s3_bucket):
    from refit.core.errors import ConfigError

    from helpers import assert_one_line_error, refit_cli

    # Refused before anything is downloaded: the store is not even read.
    assert_one_line_error(
        refit_cli("serve", env={"REFIT_STORE_URL": f"s3://{s3_bucket}/refit"}), "REFIT_SERVE_TOKEN", "--no-auth"
    )
    with pytest.raises(ConfigError, match="REFIT_SERVE_TOKEN.*--no-auth"):
        create_app(load_settings(store_url=f"s3://{s3_bucket}/refit", serve_token=""))


def test_no_auth_starts_with_a_warning_and_answers_without_a_token(checkpoints, s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/refit")
    write_pointer(store, publish_checkpoint(store, checkpoints["v1"], "v1"), None)
    port = free_port()
    env = {
        **os.environ,
        "REFIT_STORE_URL": f"s3://{s3_bucket}/refit",
        "REFIT_WORK_DIR": str(tmp_path / "work"),
        "REFIT_SERVE_PORT": str(port),
    }
    logs = tmp_path / "serve.log"
    with logs.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "refit.cli", "serve", "--no-auth"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert process.poll() is None, logs.read_text()[-2000:]
        response = predict(url, ["works well"], headers={})
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "v1"
    finally:
        process.terminate()
        process.wait(timeout=30)
    warnings = [line for line in logs.read_text().splitlines() if "WARNING" in line and "--no-auth" in line]
    assert len(warnings) == 1, logs.read_text()[-2000:]
    assert "WITHOUT AUTHENTICATION" in warnings[0] and "REFIT_SERVE_TOKEN" in warnings[0]


def series(url) -> set[str]:
    """The metric series of a /metrics scrape: each sample's name and labels, without its value."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return {line.rsplit(" ", 1)[0] for line in lines if line and not line.startswith("#")}


def test_unknown_paths_do_not_add_metric_series(server):
    import random
    import string

    url, *_ = server
    httpx.get(f"{url}/no-such-page")  # the one label every unknown path shares, from now on
    assert predict(url, ["fine"]).status_code == 200
    httpx.get(f"{url}/metrics")  # the scrape itself is counted after it answers
    before = series(url)
    rng = random.Random(7)

    def word() -> str:
        return "".join(rng.choices(string.ascii_lowercase + string.digits, k=8))

    paths = ["/" + "/".join(word() for _ in range(rng.randint(1, 3))) for _ in range(45)]
    paths += ["/models/v1", "/predict/extra", "/.env", "/wp-login.php", "/version/" + "x" * 40]
    for path in paths:
        assert httpx.get(f"{url}{path}").status_code == 404
    after = series(url)
    assert after == before, sorted(after ^ before)
    assert not [path for path in paths if path in httpx.get(f"{url}/metrics").text]
    text = httpx.get(f"{url}/metrics").text
    assert 'refit_requests_total{endpoint="unmatched",status="404"} 51.0' in text
    assert 'refit_requests_total{endpoint="/predict",status="200"} 1.0' in text  # known routes keep their name
    # another method on a known route (a 405) is counted under that route, not as a new path
    assert httpx.get(f"{url}/predict").status_code == 405
    assert 'refit_requests_total{endpoint="/predict",status="405"} 1.0' in httpx.get(f"{url}/metrics").text


@pytest.fixture
def stoppable_store(monkeypatch):
    """An S3 server of its own (moto, in its own process), so that a test can stop it."""
    import boto3

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(endpoint, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="away")
    try:
        yield "s3://away/refit", process
    finally:
        process.kill()
        process.wait(timeout=30)


def test_reload_answers_503_while_the_store_is_away_and_the_champion_keeps_serving(
    checkpoints, stoppable_store, tmp_path
):
    store_url, store_process = stoppable_store
    store = open_store(store_url)
    write_pointer(store, publish_checkpoint(store, checkpoints["v1"], "v1"), None)
    settings = load_settings(store_url=store_url, work_dir=tmp_path / "work", serve_token=TOKEN, serve_poll_s=3600)
    champion = Champion(settings)
    champion.refresh()
    with serving(create_app(settings, champion)) as url:
        up = httpx.post(f"{url}/reload", headers=AUTH, timeout=60)
        assert up.status_code == 200 and up.json()["changed"] is False
        store_process.kill()
        store_process.wait(timeout=30)
        away = httpx.post(f"{url}/reload", headers=AUTH, timeout=120)
        assert away.status_code == 503, away.text
        assert "the champion pointer cannot be read" in away.json()["detail"]
        assert "cannot reach the object store" in away.json()["detail"]
        assert predict(url, ["still fine"]).json()["model_version"] == "v1"

"""The serving API fuzzed from its own OpenAPI spec (schemathesis): whatever a client sends, no
500, and every answer (errors included) matches the documented schema.

The server is real uvicorn on 127.0.0.1 serving a tiny BERT *with behaviour features* (so
feature values reach the model), from a ``file://`` store, with a bearer token and prediction
logging to a real Postgres database on.
"""

import threading
import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from sqlalchemy import text

from refit.core.settings import load_settings
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.registry.pointer import write_pointer
from refit.registry.store import open_store
from refit.registry.versions import publish_checkpoint
from refit.serving.app import create_app
from refit.serving.follower import Champion

from helpers import serving
from model_helpers import review_data, tiny_config

pytestmark = pytest.mark.integration
TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Bounded and deterministic: the same examples every run (about 20 s on 2 cores).
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory, pg_admin, migrated_template):
    """A champion with numeric, categorical and vector features, served on a free port."""
    data = review_data(160, features=True)
    for frame in (data.train_features, data.dev_features):
        frame["vec"] = [[0.1 * (i % 3), 0.2] for i in range(len(frame))]
    config = tiny_config(
        tiny_model,
        epochs=1,
        feature_types={"category": "categorical", "device": "categorical", "sessions_7d": "numeric"},
        vector_feature="vec",
    )
    folder = save_checkpoint(train(config, data), tmp_path_factory.mktemp("fuzz-v1"), {"version": "v1"})
    root = tmp_path_factory.mktemp("fuzz-store")
    store = open_store(root.as_uri())
    write_pointer(store, publish_checkpoint(store, folder, "v1"), None)

    name = f"refit_fuzz_{uuid.uuid4().hex[:8]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"'))
    db_url = pg_admin.url.set(database=name).render_as_string(hide_password=False)
    app_settings = load_settings(
        store_url=root.as_uri(),
        work_dir=tmp_path_factory.mktemp("fuzz-work"),
        database_url=db_url,
        serve_token=TOKEN,
        serve_max_items=4,
        serve_max_text_chars=300,
        serve_batch_wait_ms=1,
        serve_poll_s=3600,
        serve_log_predictions=True,
        serve_log_flush_s=0.2,
    )
    champion = Champion(app_settings)
    champion.refresh()
    app = create_app(app_settings, champion)
    with serving(app) as url:
        yield url, app, db_url
    from refit.data.db import get_engine

    get_engine(db_url).dispose()
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def api_schema(served):
    url, *_ = served
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


OPERATIONS = [
    ("POST", "/predict"),
    ("POST", "/explain"),
    ("POST", "/reload"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/version"),
    ("GET", "/metrics"),
]
PROTECTED = {"/predict", "/explain", "/reload"}


# schemathesis' own pytest plugin (`from_fixture`) does not run on pytest 9, so each operation's
# strategy is drawn with hypothesis directly; the checks are schemathesis' all the same. Operations
# without parameters or a body have no negative examples.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in GenerationMode
    if path in ("/predict", "/explain") or mode is GenerationMode.POSITIVE
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: getattr(v, "value", v))
def test_no_request_gets_a_500_or_an_undocumented_answer(api_schema, served, method, path, mode):
    """Positive and negative examples of every operation, with the token: every schemathesis
    check (no 5xx, documented status codes, content types and bodies, invalid data refused)."""
    url, *_ = served
    examples = 40 if path in ("/predict", "/explain") else 3

    @settings(FUZZ, max_examples=examples)
    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    def fuzz(case):
        case.call_and_validate(base_url=url, headers=AUTH, timeout=60)

    fuzz()


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[1] in PROTECTED])
def test_without_the_token_protected_operations_answer_401_as_documented(api_schema, served, method, path):
    url, *_ = served

    @settings(FUZZ, max_examples=3)
    @given(case=api_schema[path][method].as_strategy())
    def fuzz(case):
        response = case.call_and_validate(base_url=url, timeout=60)
        assert response.status_code == 401, response.text

    fuzz()


def test_the_spec_documents_the_limits_and_error_bodies(served):
    url, *_ = served
    spec = httpx.get(f"{url}/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"200", "401", "422"} <= set(predict["responses"])
    body = predict["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert spec["components"]["schemas"][body]["properties"]["items"]["maxItems"] == 4


@pytest.mark.parametrize(
    "features",
    [
        {"sessions_7d": {"nested": 1}},
        {"vec": [1.0, 2.0, 3.0]},
        {"vec": "not a vector"},
        {"device": ["a", "b"]},
        {"sessions_7d": "NaN"},
    ],
)
def test_a_bad_feature_value_is_a_422_and_does_not_fail_other_requests(served, features):
    """A malformed request batched with good ones fails alone, with a 422 naming the problem."""
    url, *_ = served
    good_body = {"items": [{"text": "Love it, works well.", "features": {"device": "ios", "sessions_7d": 3}}]}
    results: dict[str, httpx.Response] = {}

    def send(key, body):
        results[key] = httpx.post(f"{url}/predict", json=body, headers=AUTH, timeout=60)

    threads = [threading.Thread(target=send, args=(f"good{i}", good_body)) for i in range(3)]
    threads.append(threading.Thread(target=send, args=("bad", {"items": [{"text": "fine", "features": features}]})))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["bad"].status_code in (200, 422), results["bad"].text
    if results["bad"].status_code == 422:
        assert "features" in results["bad"].text
    assert all(results[f"good{i}"].status_code == 200 for i in range(3)), [r.text for r in results.values()]


def test_lone_surrogates_and_nul_bytes_are_scored_and_logged(served):
    """JSON may carry lone UTF-16 surrogates that no tokenizer or UTF-8 encoder accepts; they are
    scored as U+FFFD, and prediction logging keeps working."""
    from sqlalchemy import create_engine

    url, app, db_url = served
    body = '{"items": [{"text": "\\ud800 alone \\u0000 nul \\udfff"}, {"text": "ok \\ud83d\\ude00"}]}'
    response = httpx.post(f"{url}/predict", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2
    app.state.prediction_log.flush()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        chars = conn.execute(text("SELECT text_chars FROM prediction_log ORDER BY id DESC LIMIT 2")).scalars().all()
    engine.dispose()
    assert sorted(chars) == [4, 15]  # each lone surrogate is one U+FFFD
    assert app.state.prediction_log.rows == []  # nothing stuck unwritable in the buffer


def test_injection_strings_in_bodies_are_only_scored(served):
    """Texts, feature names and values that would break pasted SQL: scored, logged as hashes, the
    database's tables as they were."""
    import hashlib

    from sqlalchemy import create_engine

    url, app, db_url = served
    engine = create_engine(db_url)
    tables = "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r'"
    with engine.connect() as conn:
        before = conn.execute(text(tables)).scalar()
    injections = ["'); DROP TABLE prediction_log; --", "' OR '1'='1", "$$; DELETE FROM feedback; $$"]
    items = [{"text": s, "features": {s: s, "device": s}} for s in injections]
    response = httpx.post(f"{url}/predict", json={"items": items}, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    app.state.prediction_log.flush()
    digests = [hashlib.sha256(s.encode()).hexdigest() for s in injections]
    with engine.connect() as conn:
        logged = conn.execute(
            text("SELECT count(*) FROM prediction_log WHERE text_sha256 = ANY(:d)"), {"d": digests}
        ).scalar()
        after = conn.execute(text(tables)).scalar()
    engine.dispose()
    assert logged == 3
    assert after == before


@pytest.mark.parametrize("headers", [{}, {"content-type": "application/json"}, {"content-type": "text/plain"}])
def test_a_body_that_is_not_utf8_is_a_422(served, headers):
    url, *_ = served
    response = httpx.post(f"{url}/predict", content=b"\xff\xfe{", headers={**AUTH, **headers})
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)

"""Two models in one `refit serve` (issue 18) as a client and the rollout's evidence see them: real
uvicorn, the candidate published to the moto S3 server, both models' rows in a real Postgres.

Shadow answers are byte for byte the answers without a candidate and the candidate's rows are
logged unseen; a canary's share holds and sticks to users; a candidate that fails leaves error rows
and live answers; a candidate pointer removed drops the candidate; a corrupt candidate is refused;
shadow work waits for live requests, and its queue is bounded."""

import dataclasses
import math
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from refit.core.settings import load_settings
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.registry.layout import model_prefix
from refit.registry.pointer import clear_candidate, write_candidate, write_pointer
from refit.registry.store import open_store
from refit.registry.versions import publish_checkpoint
from refit.serving.app import create_app
from refit.serving.follower import Champion

from helpers import serving
from model_helpers import review_data, tiny_config

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROLLOUT_ID = 7  # prediction_log.rollout_id has no foreign key: no rollouts row is needed
TEXTS = [
    "The kettle is excellent, love it.",
    "Terrible, broke after a day.",
    "It is fine, nothing special.",
    "Works well, happy with it.",
    "Awful support, never again.",
]


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory):
    """Three small trained checkpoints: v1 and v2 text only (different seeds), and ``vec``, which
    reads a 4-value ``item_vec`` feature (and so fails on a vector of another length)."""
    data = review_data(240)
    folders = {}
    for version, seed in (("v1", 1), ("v2", 2)):
        result = train(tiny_config(tiny_model, epochs=1, seed=seed), data)
        folders[version] = save_checkpoint(result, tmp_path_factory.mktemp(version), {"version": version})
    rng = np.random.default_rng(3)

    def vectors(n: int) -> pd.DataFrame:
        return pd.DataFrame({"item_vec": [list(rng.normal(size=4)) for _ in range(n)]})

    with_vectors = dataclasses.replace(
        data, train_features=vectors(len(data.train_texts)), dev_features=vectors(len(data.dev_texts))
    )
    result = train(tiny_config(tiny_model, epochs=1, seed=3, vector_feature="item_vec"), with_vectors)
    folders["vec"] = save_checkpoint(result, tmp_path_factory.mktemp("vec"), {"version": "vec"})
    return folders


@dataclasses.dataclass
class Served:
    url: str
    store: object
    app: object
    db_url: str
    http: httpx.Client

    def predict(self, body: dict) -> httpx.Response:
        response = self.http.post(f"{self.url}/predict", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        return response

    def version(self) -> dict:
        return self.http.get(f"{self.url}/version").json()

    def metrics(self) -> str:
        return self.http.get(f"{self.url}/metrics").text

    def start_rollout(self, folder, version: str, stage: str, share: float = 0.0, shadow_share: float = 1.0) -> None:
        """Publish ``version`` and name it the candidate; returns once the server serves it so."""
        published = publish_checkpoint(self.store, folder, version)
        write_candidate(
            self.store, published, rollout_id=ROLLOUT_ID, stage=stage, share=share, shadow_share=shadow_share
        )
        reloaded = self.http.post(f"{self.url}/reload", headers=AUTH, timeout=120).json()
        assert reloaded["candidate"]["version"] == version and reloaded["candidate"]["stage"] == stage, reloaded

    def shadow_done(self, expected: int) -> dict:
        """Wait until ``expected`` items were scored (or failed) in shadow; returns /version's shadow."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shadow = self.version()["shadow"]
            if shadow["queued"] == 0 and shadow["scored"] + shadow["errors"] >= expected:
                return shadow
            time.sleep(0.05)
        raise AssertionError(f"shadow work not done: {self.version()['shadow']}, expected {expected}")

    def shadow_settled(self) -> dict:
        """Wait until the shadow queue stays empty (the last responses' work queued and scored)."""
        deadline, empty = time.monotonic() + 60, 0
        while time.monotonic() < deadline and empty < 3:
            empty = empty + 1 if self.version()["shadow"]["queued"] == 0 else 0
            time.sleep(0.1)
        return self.version()["shadow"]

    def rows(self) -> list[dict]:
        """Every prediction_log row, oldest first (the log flushed first)."""
        self.app.state.prediction_log.flush()
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return [dict(r) for r in conn.execute(text("SELECT * FROM prediction_log ORDER BY id")).mappings()]
        finally:
            engine.dispose()


@pytest.fixture
def served(checkpoints, s3_bucket, db_url, tmp_path):
    """v1 is champion and no rollout is live; prediction logging is off (a rollout logs anyway)."""
    store = open_store(f"s3://{s3_bucket}/refit")
    write_pointer(store, publish_checkpoint(store, checkpoints["v1"], "v1"), None)
    settings = load_settings(
        store_url=f"s3://{s3_bucket}/refit",
        work_dir=tmp_path / "work",
        database_url=db_url,
        serve_token=TOKEN,
        serve_poll_s=0.5,
        rollout_poll_s=0.2,
        serve_log_flush_s=0.2,
        serve_max_items=16,
    )
    champion = Champion(settings)
    champion.refresh()
    app = create_app(settings, champion)
    with serving(app) as url, httpx.Client(timeout=60) as http:
        yield Served(url, store, app, db_url, http)


def body(i: int, **extra) -> dict:
    """Request ``i``: two or three items with their user, item and feedback ids."""
    items = [
        {
            "text": TEXTS[(i + j) % len(TEXTS)],
            "user_id": f"user-{i}",
            "item_id": f"item-{j}",
            "feedback_id": f"f{i}-{j}",
        }
        for j in range(2 + i % 2)
    ]
    return {"items": items, **extra}


def sample(metrics: str, name: str) -> float | None:
    """The value of one series (name and labels, as Prometheus prints them) in a scrape."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_shadow_answers_are_the_answers_without_a_candidate_and_its_predictions_are_logged_unseen(served, checkpoints):
    bodies = [body(i) for i in range(6)] + [body(6, request_id="given-request-id")]
    items = sum(len(b["items"]) for b in bodies)
    without = [served.predict(b).content for b in bodies]
    assert served.rows() == []  # no rollout, logging off: nothing is logged
    assert served.version()["candidate"] is None

    served.start_rollout(checkpoints["v2"], "v2", "shadow", shadow_share=1.0)
    answers = [served.predict(b) for b in bodies]
    assert [a.content for a in answers] == without  # byte for byte
    assert {p["model_version"] for a in answers for p in a.json()["predictions"]} == {"v1"}
    served.shadow_done(items)

    rows = served.rows()
    champion = [r for r in rows if r["role"] == "champion"]
    candidate = [r for r in rows if r["role"] == "candidate"]
    assert len(champion) == len(candidate) == items
    assert {(r["model_version"], r["served"], r["rollout_id"]) for r in champion} == {("v1", True, ROLLOUT_ID)}
    assert {(r["model_version"], r["served"], r["rollout_id"]) for r in candidate} == {("v2", False, ROLLOUT_ID)}
    assert all(r["error"] is None and r["latency_ms"] > 0 for r in rows)
    # The two models' rows of one item share the request id and the item's ids.
    key = ("request_id", "feedback_id", "user_id", "item_id", "text_sha256")
    assert sorted(tuple(r[k] for k in key) for r in champion) == sorted(tuple(r[k] for k in key) for r in candidate)
    assert len({r["request_id"] for r in champion}) == len(bodies)
    assert {r["request_id"] for r in champion if r["user_id"] == "user-6"} == {"given-request-id"}
    assert {r["feedback_id"] for r in candidate} == {i["feedback_id"] for b in bodies for i in b["items"]}
    # The candidate really answers differently, and none of its answers was returned.
    returned = {p["satisfaction"] for a in answers for p in a.json()["predictions"]}
    by_item = {(r["request_id"], r["feedback_id"]): r["satisfaction"] for r in champion}
    assert any(abs(r["satisfaction"] - by_item[(r["request_id"], r["feedback_id"])]) > 1e-6 for r in candidate)
    assert {r["satisfaction"] for r in champion} == returned

    metrics = served.metrics()
    assert sample(metrics, 'refit_model_predictions_total{role="candidate",version="v2"}') == items
    assert sample(metrics, 'refit_model_predictions_total{role="champion",version="v1"}') == 2 * items
    assert sample(metrics, 'refit_shadow_pairs_total{version="v2"}') == items
    assert sample(metrics, 'refit_shadow_disagreements_total{version="v2"}') is not None
    assert sample(metrics, 'refit_model_call_seconds_count{role="candidate",version="v2"}') >= 1
    assert sample(metrics, 'refit_model_call_seconds_count{role="champion",version="v1"}') >= len(bodies)
    assert sample(metrics, 'refit_candidate_info{stage="shadow",version="v2"}') == 0.0
    described = served.version()["candidate"]
    assert (described["version"], described["stage"], described["share"]) == ("v2", "shadow", 0.0)


def test_a_canary_answers_its_share_sticky_per_user_and_each_answer_names_its_model(served, checkpoints):
    share = 0.3
    served.start_rollout(checkpoints["v2"], "v2", "canary", share=share, shadow_share=0.2)
    n = 400
    answered_by = {}
    for i in range(n):
        answer = served.predict({"items": [{"text": TEXTS[i % len(TEXTS)], "user_id": f"u{i}"}]}).json()
        assert {p["model_version"] for p in answer["predictions"]} == {answer["model_version"]}
        answered_by[f"u{i}"] = answer["model_version"]
    assert set(answered_by.values()) == {"v1", "v2"}
    k = sum(v == "v2" for v in answered_by.values())
    assert abs(k - n * share) <= 4 * math.sqrt(n * share * (1 - share)), k

    # Sticky: a user's every request goes to the same model, whatever the items say.
    for user in [f"u{i}" for i in range(25)]:
        for j in range(3):
            items = [{"text": TEXTS[j], "user_id": user, "item_id": f"i{j}"}, {"text": TEXTS[j + 1]}]
            answer = served.predict({"items": items}).json()
            assert answer["model_version"] == answered_by[user]
            assert [p["model_version"] for p in answer["predictions"]] == [answered_by[user]] * 2
    # A request without a user is routed at random: both models answer some.
    anonymous = {served.predict({"items": [{"text": TEXTS[i % 5]}]}).json()["model_version"] for i in range(40)}
    assert anonymous == {"v1", "v2"}

    assert served.shadow_settled()["scored"] > 0
    rows = served.rows()
    answered = [r for r in rows if r["served"]]
    assert {(r["role"], r["model_version"]) for r in answered} == {("candidate", "v2"), ("champion", "v1")}
    assert sum(r["role"] == "candidate" and r["user_id"] in answered_by for r in answered) >= k
    unseen = [r for r in rows if not r["served"]]
    assert {(r["role"], r["model_version"]) for r in unseen} == {("candidate", "v2"), ("champion", "v1")}
    # Each unseen row is the other model's twin of an answered item.
    answered_keys = {(r["request_id"], r["text_sha256"]): r["role"] for r in answered}
    assert all(answered_keys[(r["request_id"], r["text_sha256"])] != r["role"] for r in unseen)
    described = served.version()["candidate"]
    assert (described["version"], described["stage"], described["share"]) == ("v2", "canary", share)


def test_a_candidate_whose_calls_fail_logs_error_rows_and_live_answers_still_succeed(served, checkpoints):
    # The candidate reads a 4-value vector; these items carry 2 values. The champion reads no
    # features and answers them; the candidate's every call fails.
    bad = [
        {"items": [{"text": t, "features": {"item_vec": [0.5, 0.5]}, "user_id": f"u{i}"}]} for i, t in enumerate(TEXTS)
    ]
    served.start_rollout(checkpoints["vec"], "vec", "shadow", shadow_share=1.0)
    assert {served.predict(b).json()["model_version"] for b in bad} == {"v1"}
    assert served.shadow_done(len(bad))["errors"] == len(bad)

    served.start_rollout(checkpoints["vec"], "vec", "canary", share=1.0, shadow_share=1.0)  # every request to it
    answers = [served.predict(b).json() for b in bad]
    assert {a["model_version"] for a in answers} == {"v1"}  # the champion answered each one
    assert all(0 <= a["predictions"][0]["satisfaction"] <= 1 for a in answers)

    rows = served.rows()
    failed = [r for r in rows if r["role"] == "candidate"]
    assert len(failed) == 2 * len(bad)
    assert all(r["error"] and "expected 4" in r["error"] and r["satisfaction"] is None for r in failed)
    assert all(not r["served"] and r["model_version"] == "vec" for r in failed)
    answered = [r for r in rows if r["role"] == "champion"]
    assert len(answered) == 2 * len(bad) and all(r["served"] and r["error"] is None for r in answered)
    metrics = served.metrics()
    assert sample(metrics, 'refit_model_errors_total{role="candidate",version="vec"}') == 2 * len(bad)
    assert sample(metrics, 'refit_model_predictions_total{role="candidate",version="vec"}') is None
    assert served.version()["candidate_failures"] == 0  # it loaded; its calls fail


def test_removing_the_candidate_pointer_drops_the_candidate_under_live_requests(served, checkpoints):
    served.start_rollout(checkpoints["v2"], "v2", "canary", share=1.0, shadow_share=0.0)
    seen, errors, stop = [], [], threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                r = http.post(
                    f"{served.url}/predict", json={"items": [{"text": TEXTS[n], "user_id": f"c{n}"}]}, headers=AUTH
                )
                (seen if r.status_code == 200 else errors).append(r.json().get("model_version") or r.text)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    clear_candidate(served.store)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and served.version()["candidate"] is not None:
        time.sleep(0.05)
    time.sleep(0.5)
    stop.set()
    for c in clients:
        c.join()
    assert errors == []
    assert served.version()["candidate"] is None
    first_v1 = seen.index("v1")
    assert "v2" in seen[:first_v1] and set(seen[first_v1 + 8 :]) == {"v1"}  # in-flight ones may finish on v2
    assert seen[-1] == "v1"
    assert "refit_candidate_info{" not in served.metrics()


def test_a_corrupt_candidate_is_refused_and_counted_and_the_champion_serves_alone(served, checkpoints):
    published = publish_checkpoint(served.store, checkpoints["v2"], "v2")
    served.store.put(f"{model_prefix('v2')}/model.safetensors", b"bit rot")
    write_candidate(served.store, published, rollout_id=ROLLOUT_ID, stage="canary", share=1.0, shadow_share=1.0)
    reloaded = served.http.post(f"{served.url}/reload", headers=AUTH, timeout=120).json()
    assert reloaded["candidate"] is None
    assert "refused candidate v2" in reloaded["candidate_error"] and "model.safetensors" in reloaded["candidate_error"]
    refused = served.version()["candidate_failures"]
    assert refused >= 1  # the poll may have refused it before /reload tried again
    time.sleep(1.0)  # five polls: none downloads the refused pointer again
    assert served.version()["candidate_failures"] == refused
    assert served.predict(body(1)).json()["model_version"] == "v1"
    assert sample(served.metrics(), "refit_candidate_reload_failures") == refused
    assert [r["role"] for r in served.rows()] == []  # no rollout is live in this server: nothing logged


def test_shadow_work_waits_for_live_requests_and_its_queue_is_bounded(served, checkpoints):
    served.start_rollout(checkpoints["v2"], "v2", "shadow", shadow_share=1.0)
    shadow = served.app.state.router.shadow
    shadow.capacity = 3
    idle = shadow.idle
    shadow.idle = lambda: False  # as while live requests are in flight
    items = [{"text": TEXTS[i % 5], "user_id": "u1", "feedback_id": f"f{i}"} for i in range(12)]
    answer = served.predict({"items": items}).json()
    assert answer["model_version"] == "v1" and len(answer["predictions"]) == 12
    time.sleep(0.5)
    waiting = served.version()["shadow"]
    assert (waiting["queued"], waiting["scored"], waiting["dropped"]) == (3, 0, 9)  # nothing ran meanwhile
    shadow.idle = idle
    assert served.shadow_done(3)["scored"] == 3
    assert sample(served.metrics(), "refit_shadow_dropped_total") == 9.0
    assert sum(r["role"] == "candidate" for r in served.rows()) == 3

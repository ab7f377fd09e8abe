"""The object store over a real S3 API (moto over HTTP) and over a folder; the same contract."""

import pytest

from refit.core.errors import StoreError
from refit.registry.store import AlreadyExists, FileStore, S3Store, open_store


@pytest.fixture(params=["s3", "file"])
def store(request, tmp_path):
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return open_store(f"s3://{bucket}/prefix")
    return open_store((tmp_path / "store").as_uri())


def test_put_get_list(store):
    store.put("a/b.txt", b"one")
    store.put("a/c.txt", b"two")
    store.put("a/b.txt", b"three")
    assert store.get("a/b.txt") == b"three"
    assert store.list("a/") == ["a/b.txt", "a/c.txt"]
    assert store.exists("a/c.txt") and not store.exists("a/zzz")


def test_if_absent_refuses_to_overwrite(store):
    store.put("v1/manifest.json", b"first", if_absent=True)
    with pytest.raises(AlreadyExists):
        store.put("v1/manifest.json", b"second", if_absent=True)
    assert store.get("v1/manifest.json") == b"first"


def test_missing_key_is_a_clear_error(store):
    with pytest.raises(StoreError, match="does not exist"):
        store.get("nope")


def test_open_store_picks_the_backend(tmp_path):
    assert isinstance(open_store("s3://bucket/x"), S3Store)
    assert isinstance(open_store(tmp_path.as_uri()), FileStore)


def test_unreachable_endpoint_is_one_line(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = open_store("s3://bucket/x")
    with pytest.raises(StoreError, match="cannot reach the object store") as info:
        store.put("k", b"v")
    assert "\n" not in str(info.value)


def test_missing_bucket_is_named(s3_endpoint, s3_bucket):
    store = open_store("s3://no-such-bucket-here/x")
    with pytest.raises(StoreError, match="no-such-bucket-here"):
        store.put("k", b"v")


def test_check_tells_a_missing_bucket_from_an_unreachable_endpoint(s3_bucket, monkeypatch):
    open_store(f"s3://{s3_bucket}/x").check()
    with pytest.raises(StoreError, match="does not exist") as missing:
        open_store("s3://no-such-bucket-here/x").check()
    assert missing.value.permanent  # retrying cannot fix it
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    with pytest.raises(StoreError, match="cannot reach") as unreachable:
        open_store(f"s3://{s3_bucket}/x").check()
    assert not unreachable.value.permanent  # may come back: worth a retry

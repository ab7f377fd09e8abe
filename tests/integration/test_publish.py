"""Publishing to the moto S3 server over HTTP: layout, multipart, verification, immutability,
completion after a crash, the pointer moved by ETag, withdrawal, and retention."""

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from refit.core.errors import CheckpointError
from refit.models.checkpoint import MANIFEST
from refit.registry.layout import POINTER, model_prefix
from refit.registry.pointer import read_pointer, write_pointer
from refit.registry.store import AlreadyExists, Conflict, FileStore, S3Store, TransferOptions, open_store
from refit.registry.table import collect_garbage
from refit.registry.versions import Published, fetch_checkpoint, publish_checkpoint, withdraw_unregistered

from helpers import checkpoint, gate_decision, publish_and_record

pytestmark = pytest.mark.integration
MB = 1024 * 1024


class CrashingStore(S3Store):
    """The real S3 store, with the process 'dying' on the n-th file upload (fault injection)."""

    def __init__(self, bucket, prefix, crash_on: int):
        super().__init__(bucket, prefix)
        self.crash_on, self.uploads = crash_on, []

    def put_file(self, key, path, **kwargs):
        if len(self.uploads) + 1 == self.crash_on:
            raise ConnectionResetError("injected crash mid-upload")
        self.uploads.append(key)
        return super().put_file(key, path, **kwargs)


class CountingStore(S3Store):
    def __init__(self, bucket, prefix, transfer=None):
        super().__init__(bucket, prefix, transfer=transfer)
        self.uploads = []

    def put_file(self, key, path, **kwargs):
        self.uploads.append(key)
        return super().put_file(key, path, **kwargs)


def big_checkpoint(tmp_path, name, megabytes: int):
    folder = checkpoint(tmp_path, name)
    (folder / "model.safetensors").write_bytes(os.urandom(megabytes * MB))
    (folder / "tokenizer.json").write_text(json.dumps({"vocab": list(range(1000))}))
    return folder


def test_publish_then_download_and_verify_with_multipart(s3_bucket, tmp_path):
    store = CountingStore(s3_bucket, "refit", TransferOptions(multipart_threshold=5 * MB, part_size=5 * MB))
    folder = big_checkpoint(tmp_path, "v1", 12)
    published = publish_checkpoint(store, folder, "v1")
    prefix = "models/satisfaction/versions/v1"
    assert published.uri == f"s3://{s3_bucket}/refit/{prefix}"
    assert set(store.list(f"{prefix}/")) == {f"{prefix}/{f}" for f in os.listdir(folder)} | {f"{prefix}/{MANIFEST}"}
    manifest = json.loads(store.get(f"{prefix}/{MANIFEST}"))
    assert manifest["version"] == "v1" and manifest["model_name"] == "satisfaction"
    assert manifest["files"]["model.safetensors"]["bytes"] == 12 * MB
    # the large file went up in parts (a multipart ETag is not an MD5: it ends in -<parts>)
    assert store.head(f"{prefix}/model.safetensors").etag.strip('"').endswith("-3")

    copy = fetch_checkpoint(store, "v1", tmp_path / "copy")
    assert (copy / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_a_crash_mid_upload_then_republish_completes_without_duplicates(s3_bucket, tmp_path):
    folder = big_checkpoint(tmp_path, "v1", 1)
    crashing = CrashingStore(s3_bucket, "refit", crash_on=3)
    with pytest.raises(ConnectionResetError):
        publish_checkpoint(crashing, folder, "v1")
    prefix = model_prefix("v1")
    store = CountingStore(s3_bucket, "refit")
    assert not store.exists(f"{prefix}/{MANIFEST}")  # not published: no manifest
    made_it = store.list(f"{prefix}/")  # the files sent before the crash
    assert sorted(made_it) == sorted(crashing.uploads) and 0 < len(made_it) < len(os.listdir(folder))
    assert read_pointer(store) is None

    published = publish_checkpoint(store, folder, "v1")
    assert len(store.uploads) == len(os.listdir(folder)) - len(made_it)  # only the missing files went up
    assert sorted(store.list(f"{prefix}/")) == sorted(
        [f"{prefix}/{f}" for f in os.listdir(folder)] + [f"{prefix}/{MANIFEST}"]
    )
    assert read_pointer(store) is None  # publishing never moves the pointer
    # and publishing the same version again is a no-op
    assert publish_checkpoint(store, folder, "v1") == published


def test_a_published_version_is_never_overwritten(s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/refit")
    folder = checkpoint(tmp_path, "v1")
    publish_checkpoint(store, folder, "v1")
    (folder / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(AlreadyExists, match="already published"):
        publish_checkpoint(store, folder, "v1")
    # a stray object with other content under an unsealed version is refused too
    other = checkpoint(tmp_path, "v2")
    store.put(f"{model_prefix('v2')}/config.json", b"not this")
    with pytest.raises(AlreadyExists, match="other content"):
        publish_checkpoint(store, other, "v2")


def test_an_object_that_does_not_arrive_intact_is_not_sealed(s3_bucket, tmp_path):
    class Truncating(S3Store):
        def put_file(self, key, path, **kwargs):
            if key.endswith("model.safetensors"):
                self.put(key, b"truncated")  # the store got something else than what was sent
            else:
                return super().put_file(key, path, **kwargs)

    store = Truncating(s3_bucket, "refit")
    with pytest.raises(CheckpointError, match="did not arrive intact"):
        publish_checkpoint(store, checkpoint(tmp_path, "v1"), "v1")
    assert not store.exists(f"{model_prefix('v1')}/{MANIFEST}")


def _parts_store(s3_bucket, on_part, checksum="crc32"):
    """The real S3 store with 5 MB parts, whose client passes every part through ``on_part``."""
    transfer = TransferOptions(multipart_threshold=5 * MB, part_size=5 * MB, checksum=checksum)
    store = CountingStore(s3_bucket, "refit", transfer)
    client, upload_part = store.client, store.client.upload_part

    def intercepted(**kwargs):
        return upload_part(**on_part(kwargs))

    client.upload_part = intercepted
    return store


def test_a_crash_mid_multipart_upload_leaves_no_parts_and_republish_sends_only_what_is_missing(s3_bucket, tmp_path):
    folder = big_checkpoint(tmp_path, "v1", 12)  # model.safetensors goes up in 3 parts

    def crash_on_part_2(kwargs):
        if kwargs["PartNumber"] == 2:
            raise ConnectionResetError("injected crash mid-part")
        return kwargs

    crashing = _parts_store(s3_bucket, crash_on_part_2)
    with pytest.raises(ConnectionResetError):
        publish_checkpoint(crashing, folder, "v1")
    prefix = model_prefix("v1")
    weights = f"{prefix}/model.safetensors"
    before = set(crashing.list(f"{prefix}/"))
    assert weights not in before and f"{prefix}/{MANIFEST}" not in before
    assert crashing.client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []  # aborted

    store = CountingStore(s3_bucket, "refit", TransferOptions(multipart_threshold=5 * MB, part_size=5 * MB))
    publish_checkpoint(store, folder, "v1")
    files = {f"{prefix}/{f}" for f in os.listdir(folder)}
    assert set(store.uploads) == files - before  # only what was missing went up
    assert weights in store.uploads
    assert (
        fetch_checkpoint(store, "v1", tmp_path / "copy").joinpath("model.safetensors").read_bytes()
        == (folder / "model.safetensors").read_bytes()
    )


@pytest.mark.parametrize(
    ("checksum", "store_computes"), [("crc32", True), ("crc32", False), ("sha256", True), ("md5", True)]
)
def test_a_part_damaged_in_transit_is_refused_and_a_retry_seals_it_whole(checksum, store_computes, s3_bucket, tmp_path):
    folder = big_checkpoint(tmp_path, "v1", 12)
    damaged = []

    def flip_a_byte_of_part_2(kwargs):
        if kwargs["PartNumber"] == 2 and not damaged:
            body = bytearray(kwargs["Body"])
            body[100] ^= 0xFF
            damaged.append(kwargs["PartNumber"])
            kwargs = {**kwargs, "Body": bytes(body)}
            # Refit hashed the part before the damage. A store that checks the digest sent with it
            # refuses the part itself. Here the store keeps what arrived: its checksum computed
            # of these bytes (by botocore, as such a store would), or the one sent, unchecked
            # (what moto does; it combines the parts' checksums from the bytes it got).
            if store_computes:
                kwargs.pop({"md5": "ContentMD5"}.get(checksum, f"Checksum{checksum.upper()}"))
        return kwargs

    store = _parts_store(s3_bucket, flip_a_byte_of_part_2, checksum)
    with pytest.raises(CheckpointError, match="did not arrive intact") as refused:
        publish_checkpoint(store, folder, "v1")
    assert damaged and not refused.value.permanent
    assert not store.exists(f"{model_prefix('v1')}/{MANIFEST}")
    # The retry finds the damaged object, sees it is not these bytes, and sends it again.
    store.uploads.clear()
    publish_checkpoint(store, folder, "v1")
    assert store.uploads == [f"{model_prefix('v1')}/model.safetensors"]
    copy = fetch_checkpoint(store, "v1", tmp_path / "copy")
    assert (copy / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_a_single_put_damaged_in_transit_is_refused_though_the_store_kept_the_checksum_sent(s3_bucket, tmp_path):
    """moto keeps a PUT's S3 checksum as sent, unchecked: the ETag, the MD5 of what it got, is
    what shows the damage."""
    store = CountingStore(s3_bucket, "refit")
    put_object = store.client.put_object

    def damaging(**kwargs):
        if kwargs["Key"].endswith("model.safetensors"):
            body = bytearray(kwargs["Body"])
            body[0] ^= 0xFF
            kwargs = {**kwargs, "Body": bytes(body)}
            kwargs.pop("ContentMD5")  # a store that checks it refuses the PUT itself
        return put_object(**kwargs)

    store.client.put_object = damaging
    folder = checkpoint(tmp_path, "v1")
    with pytest.raises(CheckpointError, match="did not arrive intact"):
        publish_checkpoint(store, folder, "v1")
    head = store.head(f"{model_prefix('v1')}/model.safetensors")
    assert head.checksum is not None and head.checksum.startswith("crc32:")  # the checksum sent is there
    assert not store.exists(f"{model_prefix('v1')}/{MANIFEST}")


@pytest.mark.parametrize("checksum", ["crc32", "sha256", "md5"])
def test_a_publish_checks_its_uploads_without_reading_the_files_again(checksum, s3_bucket, tmp_path, monkeypatch):
    """What the store reports (its checksum; for md5 its ETag) is compared with what was computed
    while the parts went up."""
    import refit.registry.store as store_module

    def second_read(*args):
        raise AssertionError("a file was read again to check its upload")

    monkeypatch.setattr(store_module, "_local_fingerprint", second_read)
    transfer = TransferOptions(multipart_threshold=5 * MB, part_size=5 * MB, checksum=checksum)
    store = S3Store(s3_bucket, "refit", transfer=transfer)
    folder = big_checkpoint(tmp_path, "v1", 12)
    publish_checkpoint(store, folder, "v1")
    head = store.head(f"{model_prefix('v1')}/model.safetensors")
    assert head.etag.strip('"').endswith("-3")
    assert (head.checksum or "md5").startswith(checksum)  # the store kept the parts' checksums
    assert store.exists(f"{model_prefix('v1')}/{MANIFEST}")


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_the_pointer_moves_only_from_the_expected_champion_by_etag(kind, s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/refit") if kind == "s3" else FileStore(tmp_path / "store")
    v1, v2, v3 = (Published(v, f"uri/{v}", "sha") for v in ("v1", "v2", "v3"))
    write_pointer(store, v1, None)
    stale = store.head(POINTER).etag
    write_pointer(store, v2, "v1")
    assert read_pointer(store)["version"] == "v2"
    # a publisher that still believes v1 is champion cannot move it
    with pytest.raises(Conflict, match="names v2, not v1"):
        write_pointer(store, v3, "v1")
    # and a write conditional on a stale ETag is refused by the store itself
    with pytest.raises(Conflict):
        store.put_if_match(POINTER, b"{}", stale)
    assert read_pointer(store)["version"] == "v2"


POINTER_WORKER = """
import sys
from refit.registry.pointer import write_pointer
from refit.registry.versions import Published
from refit.registry.store import open_store, Conflict
store = open_store(sys.argv[1])
try:
    write_pointer(store, Published(sys.argv[2], "uri", "sha"), "v1")
    print("won")
except Conflict:
    print("lost")
"""


def test_two_concurrent_publishers_one_pointer_winner(s3_bucket):
    store = open_store(f"s3://{s3_bucket}/refit")
    write_pointer(store, Published("v1", "uri", "sha"), None)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", POINTER_WORKER, f"s3://{s3_bucket}/refit", v],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for v in ("v2a", "v2b")
    ]
    results = [r.communicate(timeout=120)[0].strip() for r in runs]
    assert sorted(results) == ["lost", "won"]
    winner = ["v2a", "v2b"][results.index("won")]
    assert read_pointer(store)["version"] == winner


def test_a_version_the_registry_never_recorded_is_withdrawn(db_url, s3_bucket, tmp_path):
    engine = create_engine(db_url)
    store = open_store(f"s3://{s3_bucket}/refit")
    publish_checkpoint(store, checkpoint(tmp_path, "orphan"), "orphan")
    publish_and_record(engine, store, tmp_path, "kept", gate_decision(False))
    assert withdraw_unregistered(engine, store, "orphan") == 4
    assert store.list(f"{model_prefix('orphan')}/") == []
    assert withdraw_unregistered(engine, store, "kept") == 0
    assert store.exists(f"{model_prefix('kept')}/{MANIFEST}")
    engine.dispose()


def test_gc_keeps_the_newest_and_every_champion(db_url, s3_bucket, tmp_path):
    engine = create_engine(db_url)
    store = open_store(f"s3://{s3_bucket}/refit")

    def publish(version, promote, expected):
        publish_and_record(engine, store, tmp_path, version, gate_decision(promote), expected)

    publish("v1", True, None)
    for v in ("v2", "v3", "v4"):
        publish(v, False, "v1")
    publish("v5", True, "v1")
    publish("v6", False, "v5")
    env = {**os.environ, "REFIT_DATABASE_URL": db_url, "REFIT_STORE_URL": f"s3://{s3_bucket}/refit"}
    run = subprocess.run(
        [sys.executable, "-m", "refit.cli", "gc", "--dry-run", "--keep", "2", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    listed = json.loads(run.stdout)
    # kept: v6, v5 (newest two), v1 (was champion); v2..v4 rejected and older
    assert [v["version"] for v in listed["versions"]] == ["v2", "v3", "v4"]
    assert all(store.exists(f"{model_prefix(v)}/{MANIFEST}") for v in ("v2", "v3", "v4"))  # dry run

    gone = collect_garbage(engine, store, keep=2, dry_run=False)
    assert [g["version"] for g in gone] == ["v2", "v3", "v4"]
    assert all(store.list(f"{model_prefix(v)}/") == [] for v in ("v2", "v3", "v4"))
    assert all(store.exists(f"{model_prefix(v)}/{MANIFEST}") for v in ("v1", "v5", "v6"))
    with engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT version, status FROM model_versions")).all())
    assert statuses == {
        "v1": "retired",
        "v2": "archived",
        "v3": "archived",
        "v4": "archived",
        "v5": "champion",
        "v6": "rejected",
    }
    engine.dispose()


def test_stores_that_take_checksums_get_each_files_sha256(s3_bucket, tmp_path):
    import base64

    store = S3Store(s3_bucket, "refit", transfer=TransferOptions(checksum="sha256"))
    folder = checkpoint(tmp_path, "v1")
    publish_checkpoint(store, folder, "v1")
    manifest = json.loads(store.get(f"{model_prefix('v1')}/{MANIFEST}"))
    head = store.client.head_object(
        Bucket=s3_bucket, Key=f"refit/{model_prefix('v1')}/config.json", ChecksumMode="ENABLED"
    )
    sent = base64.b64decode(head["ChecksumSHA256"]).hex()
    assert sent == manifest["files"]["config.json"]["sha256"]  # the store checked the same digest

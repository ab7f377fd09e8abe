"""Object storage behind one small interface: ``s3://`` (any S3-compatible API) or ``file://``.

Keys are ``/``-separated paths under the store's root. Writes are whole-object and atomic on both
backends (an S3 PUT is atomic; a file write goes through a temporary name and ``os.replace``), and
``put(..., if_absent=True)`` refuses to overwrite, which is what makes model versions immutable.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import tempfile
import threading
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from refit.core.errors import StoreError
from refit.core.hashing import sha256_file


class AlreadyExists(StoreError):
    """A write with ``if_absent=True`` found the key already there."""

    permanent = True


class Conflict(StoreError):
    """A conditional write (``if_match``) found the object changed since it was read."""

    permanent = True


@dataclass(frozen=True)
class Head:
    """What a store knows about an object without reading it."""

    size: int
    etag: str
    sha256: str | None  # the SHA-256 refit recorded when it wrote the object, if any
    checksum: str | None = None  # the store's own checksum of what it holds, "crc32:<base64>", if it keeps one


@dataclass(frozen=True)
class TransferOptions:
    """How large files move: multipart above the threshold, parts in parallel."""

    multipart_threshold: int = 8 * 1024 * 1024
    part_size: int = 8 * 1024 * 1024
    max_concurrency: int = 10
    # How each object or part is checked on arrival: an S3 checksum ("crc32", "sha256"), which the
    # store keeps and reports, or "md5" (Content-MD5 and the ETag) for stores that refuse S3 checksums.
    checksum: str = "crc32"
    addressing_style: str = "auto"  # "path" for MinIO, Ceph and most self-hosted stores


class ObjectStore(ABC):
    """The operations refit needs from object storage."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Write bytes at a key.

        Args:
            key: where, inside the store's root.
            data: the bytes.
            if_absent: refuse to overwrite an object already there.

        Raises:
            AlreadyExists: ``if_absent`` and an object is there.
            StoreError: the store cannot be written.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Read the object at ``key`` (:class:`StoreError` when missing)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """A URI a person or another tool can use for ``key``."""

    @abstractmethod
    def head(self, key: str) -> Head | None:
        """Size, ETag and recorded SHA-256 of the object at ``key``, or None when there is none."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str | None) -> None:
        """Write bytes at a key only if the object there is still the one the caller read.

        Args:
            key: where, inside the store's root.
            data: the bytes.
            etag: the ETag the object must still have (None: there must be no object).

        Raises:
            Conflict: the object changed (or appeared, or went) since.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object at ``key`` (no error when it is already gone)."""

    @abstractmethod
    def check(self) -> None:
        """Fail with a clear :class:`StoreError` when the store cannot be used (checked before a
        run spends time training)."""

    def put_file(self, key: str, path: Path, *, if_absent: bool = False, sha256: str | None = None) -> str | None:
        """Upload a file.

        Args:
            key: where, inside the store's root.
            path: the local file.
            if_absent: refuse to overwrite an object already there (:class:`AlreadyExists`).
            sha256: the file's SHA-256, recorded with the object (and checked by stores that can).

        Returns:
            The ETag the store reports for these bytes when they arrive whole, computed while
            they were sent (so checking the upload needs no second read of the file), or None when
            this store has no such ETag.
        """
        self.put(key, Path(path).read_bytes(), if_absent=if_absent)
        return None

    def get_file(self, key: str, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.get(key))

    def holds(self, key: str, path: Path, head: Head | None = None, sent_etag: str | None = None) -> bool:
        """Whether the stored bytes at a key are the bytes of a local file. Reads the object back
        (the recorded SHA-256 is what the uploader declared, not what arrived).

        Args:
            key: the stored object.
            path: the local file.
            head: the object's head, when the caller has it.
            sent_etag: what :meth:`put_file` returned for these bytes.

        Returns:
            Whether they are the same bytes (False when the object cannot be read).
        """
        try:
            return hashlib.sha256(self.get(key)).hexdigest() == sha256_file(path)
        except StoreError:
            return False


class FileStore(ObjectStore):
    """A folder on a local or mounted disk."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise StoreError(f"key {key!r} escapes the store root")
        return path

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if if_absent:
                try:
                    os.link(tmp, path)  # atomic create-if-absent
                except FileExistsError:
                    raise AlreadyExists(f"{self.uri(key)} already exists") from None
            else:
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.uri(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root
        if not base.exists():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith((".tmp-", ".lock-")):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def head(self, key: str) -> Head | None:
        path = self._path(key)
        if not path.is_file():
            return None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return Head(path.stat().st_size, digest, digest)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".lock-{path.name}", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # compare and replace as one step among refit processes
            current = self.head(key)
            if (current.etag if current else None) != etag:
                raise Conflict(f"{self.uri(key)} changed since it was read; not overwritten")
            self.put(key, data)

    def holds(self, key: str, path: Path, head: Head | None = None, sent_etag: str | None = None) -> bool:
        head = head or self.head(key)  # a file's head hashes its bytes
        return head is not None and head.sha256 == sha256_file(path)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use the store folder {self.root}: {exc.strerror}", permanent=True) from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"the store folder {self.root} is not writable", permanent=True)


class S3Store(ObjectStore):
    """A bucket and prefix on any S3-compatible API (AWS, MinIO, Ceph, R2, moto).

    The endpoint and credentials are boto3's own: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``,
    and the standard credential chain.
    """

    def __init__(self, bucket: str, prefix: str = "", client=None, transfer: TransferOptions | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self.transfer = transfer or TransferOptions()
        # Parts in flight across every upload of this store (files may go up side by side).
        self._parts_in_flight = threading.BoundedSemaphore(self.transfer.max_concurrency)

    @property
    def client(self):
        if self._client is None:
            # boto3 and botocore are imported on first use here and in the methods below: they add
            # about a third of a second to every start, and a file store never needs them.
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                config=Config(
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 4, "mode": "standard"},
                    # Checksums on every PUT are a newer-AWS default that some S3-compatible
                    # servers reject; refit keeps its own SHA-256 manifest instead.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    s3={"addressing_style": self.transfer.addressing_style},
                    # the parts in flight, and beside them a few small files' PUTs and HEADs
                    max_pool_connections=max(10, self.transfer.max_concurrency + 8),
                ),
            )
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, exc: Exception, action: str, key: str) -> StoreError:
        from botocore.exceptions import ClientError, EndpointConnectionError

        if isinstance(exc, EndpointConnectionError):
            return StoreError(f"cannot reach the object store to {action} {self.uri(key)}: {exc}")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "?")
            if code in ("NoSuchBucket",) or (code == "404" and action == "use"):
                return StoreError(f"bucket {self.bucket!r} does not exist", permanent=True)
            if code in ("NoSuchKey", "404"):
                return StoreError(f"{self.uri(key)} does not exist", permanent=True)
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return StoreError(
                    f"access denied to {self.uri(key)} ({code}): check the AWS credentials", permanent=True
                )
            return StoreError(f"object store refused to {action} {self.uri(key)}: {code}")
        return StoreError(f"object store error on {action} {self.uri(key)}: {exc}")

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**kwargs)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if if_absent and (status == 412 or exc.response["Error"].get("Code") == "PreconditionFailed"):
                raise AlreadyExists(f"{self.uri(key)} already exists") from None
            raise self._fail(exc, "write", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "write", key) from None

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.transfer.multipart_threshold,
            multipart_chunksize=self.transfer.part_size,
            max_concurrency=self.transfer.max_concurrency,
        )

    def put_file(self, key: str, path: Path, *, if_absent: bool = False, sha256: str | None = None) -> str:
        """Upload a file: one PUT below the multipart threshold, else its parts in parallel.

        Each part is read once and hashed as it is sent, with the transfer's ``checksum``: an S3
        checksum (``x-amz-checksum-crc32`` by default) or ``Content-MD5``, which the store checks on
        arrival. A single PUT (a file below the multipart threshold, so a small one) carries its
        ``Content-MD5`` as well, whatever the checksum. Returns what the store reports for the
        object when every byte arrived as sent: a part's object its checksum, the parts' combined as
        S3 combines them (for ``md5`` its ETag), and a single PUT's its ETag, the MD5 the store
        computes of what it got. Comparing it with :meth:`head` verifies the upload without reading
        the file again. A failed multipart upload is aborted, so no parts are left behind.

        Multipart uploads cannot all be conditional on S3-compatible stores, so ``if_absent``
        checks first; the manifest, written last with ``If-None-Match``, is what seals a version.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        if if_absent and self.exists(key):
            raise AlreadyExists(f"{self.uri(key)} already exists")
        path = Path(path)
        extra = {"Metadata": {"sha256": sha256}} if sha256 else {}
        try:
            size = path.stat().st_size
            if size < self.transfer.multipart_threshold:
                data = path.read_bytes()
                md5 = _digest("md5", data)
                arguments = self._digests(data)[0] if self.transfer.checksum != "md5" else {}
                arguments["ContentMD5"] = base64.b64encode(md5).decode()
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra, **arguments)
                return md5.hex()
            return self._put_parts(key, path, size, extra)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "write", key) from None

    def _digests(self, data: bytes) -> tuple[dict, bytes]:
        """The checksum arguments of one PUT of ``data`` (``Content-MD5``, or the S3 checksum and
        its algorithm), and the digest they carry."""
        algorithm = self.transfer.checksum
        digest = _digest(algorithm, data)
        encoded = base64.b64encode(digest).decode()
        if algorithm == "md5":
            return {"ContentMD5": encoded}, digest
        name = algorithm.upper()  # some stores (moto) read the algorithm from its own header too
        return {f"Checksum{name}": encoded, "ChecksumAlgorithm": name}, digest

    def _put_parts(self, key: str, path: Path, size: int, extra: dict) -> str:
        """A multipart upload of ``path``, ``max_concurrency`` parts at a time; what the store will report
        for it (see :func:`_parts_fingerprint`)."""
        from concurrent.futures import ThreadPoolExecutor

        part_size = self.transfer.part_size
        count = max(1, -(-size // part_size))
        target = {"Bucket": self.bucket, "Key": self._key(key)}
        algorithm = self.transfer.checksum
        checksum = {} if algorithm == "md5" else {"ChecksumAlgorithm": algorithm.upper()}
        upload = self.client.create_multipart_upload(**target, **extra, **checksum)["UploadId"]

        def send(index: int) -> tuple[dict, bytes]:
            with self._parts_in_flight:
                with open(path, "rb") as handle:
                    data = os.pread(handle.fileno(), part_size, index * part_size)
                arguments, digest = self._digests(data)
                sent = self.client.upload_part(**target, UploadId=upload, PartNumber=index + 1, Body=data, **arguments)
            part = {"PartNumber": index + 1, "ETag": sent["ETag"]}
            if checksum:  # the part's checksum as the store recorded it
                field = f"Checksum{algorithm.upper()}"
                part[field] = sent.get(field) or arguments[field]
            return part, digest

        try:
            with ThreadPoolExecutor(max_workers=min(count, self.transfer.max_concurrency)) as pool:
                parts = list(pool.map(send, range(count)))
            self.client.complete_multipart_upload(
                **target, UploadId=upload, MultipartUpload={"Parts": [part for part, _ in parts]}
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the upload's own error is the one to raise
                self.client.abort_multipart_upload(**target, UploadId=upload)
            raise
        return _parts_fingerprint(algorithm, [digest for _, digest in parts])

    def holds(self, key: str, path: Path, head: Head | None = None, sent_etag: str | None = None) -> bool:
        """Compare what the store computed of the bytes it holds with ``sent_etag`` (what
        :meth:`put_file` computed while sending), else with the file hashed the same way: a
        multipart object's checksum (the parts' combined) or ETag (the parts' MD5s combined), for
        this store's part size; a single PUT's ETag (its MD5). Only when none matches (e.g. an
        SSE-KMS ETag) read the object back.

        A single PUT's stored S3 checksum is not compared: some stores (moto) keep the value sent
        without checking it, while every store computes the ETag; a multipart object's checksum is
        built from its parts as they arrived (AWS checks each against the one sent)."""
        head = head or self.head(key)
        if head is None:
            return False
        etag = head.etag.strip('"')
        multipart = "-" in etag
        reported = {etag, head.checksum} - {None} if multipart else {etag}
        if sent_etag is not None and sent_etag in reported:
            return True
        algorithm = (head.checksum or "md5").split(":")[0] if multipart else "md5"
        if reported & {_local_fingerprint(Path(path), self.transfer, algorithm, multipart=multipart)}:
            return True
        return super().holds(key, path)

    def get_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(path), Config=self._transfer_config())
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "read", key) from None

    def head(self, key: str) -> Head | None:
        from botocore.exceptions import BotoCoreError, ClientError

        mode = {} if self.transfer.checksum == "md5" else {"ChecksumMode": "ENABLED"}
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._key(key), **mode)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, "check", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "check", key) from None
        # A multipart object's checksum is its parts' combined; AWS adds "-<parts>".
        kept = [(name.lower(), meta[f"Checksum{name}"]) for name in ("CRC32", "SHA256") if meta.get(f"Checksum{name}")]
        checksum = f"{kept[0][0]}:{kept[0][1].split('-')[0]}" if kept else None
        return Head(meta["ContentLength"], meta["ETag"], meta.get("Metadata", {}).get("sha256"), checksum)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412) or exc.response["Error"].get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                raise Conflict(f"{self.uri(key)} changed since it was read; not overwritten") from None
            raise self._fail(exc, "write", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "write", key) from None

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "delete", key) from None

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "read", key) from None

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "list", prefix) from None
        return sorted(keys)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "use", "") from None


def _digest(algorithm: str, data: bytes) -> bytes:
    """The ``md5``, ``sha256`` or ``crc32`` (4 bytes, big-endian, as S3 encodes it) of ``data``."""
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    if algorithm == "md5":
        return hashlib.md5(data, usedforsecurity=False).digest()
    return hashlib.sha256(data).digest()


def _parts_fingerprint(algorithm: str, digests: list[bytes]) -> str:
    """What the store reports for an object sent as parts with these digests: for ``md5`` its
    ETag (the MD5 of the parts' MD5s, then ``-<parts>``), else ``<algorithm>:<base64>`` of its
    checksum (the checksum of the parts' checksums, S3's composite form)."""
    combined = _digest(algorithm, b"".join(digests))
    if algorithm == "md5":
        return combined.hex() + f"-{len(digests)}"
    return f"{algorithm}:{base64.b64encode(combined).decode()}"


def _local_fingerprint(path: Path, transfer: TransferOptions, algorithm: str, *, multipart: bool) -> str:
    """The file's bytes as the store reports them when sent whole, or in this store's parts,
    hashed with ``algorithm`` (see :func:`_parts_fingerprint`); sent whole, its MD5."""
    whole, parts = hashlib.md5(usedforsecurity=False), []
    with open(path, "rb") as handle:
        while block := handle.read(transfer.part_size):
            if multipart:
                parts.append(_digest(algorithm, block))
            else:
                whole.update(block)
    return _parts_fingerprint(algorithm, parts) if multipart else whole.hexdigest()


def open_store(url: str, transfer: TransferOptions | None = None) -> ObjectStore:
    """The store for a ``s3://bucket/prefix`` or ``file:///path`` URL (nothing is contacted yet)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, transfer=transfer)
    if parsed.scheme == "file":
        # file://./rel and file:///abs are both accepted; the first is relative to the cwd.
        raw = unquote(parsed.netloc + parsed.path)
        return FileStore(Path(raw))
    raise StoreError(f"unsupported store URL {url!r}: expected s3:// or file://")


def store_for(settings) -> ObjectStore:
    """The store the settings name, with their transfer options."""
    return open_store(
        settings.store_url,
        TransferOptions(
            multipart_threshold=settings.store_multipart_mb * 1024 * 1024,
            part_size=settings.store_part_mb * 1024 * 1024,
            max_concurrency=settings.store_max_concurrency,
            checksum=settings.store_checksum,
            addressing_style=settings.store_addressing_style,
        ),
    )

"""The S3 repository driver (AWS S3, MinIO, R2, moto: anything with an endpoint_url).

Layout under the bucket folder (the block's prefix), mirroring the local driver:
    <prefix>/backups/<backup_id>/<data files>, manifest.json (uploaded last)
    <prefix>/wal/...                                   (WAL archive, see pgkeeper.wal)
A backup prefix without manifest.json is incomplete: never listed, collected as garbage.

Every key is built here from the normalised prefix; keys that come back from a listing are
turned back into relative names before use, because passing a full key to prefect-aws's
S3Bucket helpers would prefix the bucket folder a second time.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pgkeeper.errors import NotFound, RepositoryError
from pgkeeper.names import is_backup_id

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

MANIFEST = "manifest.json"
MiB = 1024 * 1024

# Retries inside botocore (exponential backoff with jitter) for every request; Prefect's task
# retries sit on top of these for failures that outlast them. The block's own client config
# wins over these defaults.
CLIENT_DEFAULTS: dict[str, Any] = {
    "retries": {"max_attempts": 10, "mode": "standard"},
    "connect_timeout": 10,
    "read_timeout": 120,
}
# A streamed download that breaks mid-body is resumed with a Range request this many times.
MAX_RESUMES = 8


@dataclass(frozen=True)
class StoredObject:
    """One object under the repository prefix, named relative to it."""
    name: str  # e.g. "backups/backup_20240315_143022/crm.dump.zst"
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload that was started and never completed or aborted."""
    name: str
    upload_id: str
    initiated: datetime


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or type(exc).__name__


def _transient(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not response:
        return True  # a connection that broke: worth another try
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    # 403/404-class answers do not get better by waiting; 5xx and throttling might.
    return status >= 500 or _error_code(exc) in ("SlowDown", "RequestTimeout", "Throttling")


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """botocore failures as one plain RepositoryError line (no credentials, no traceback)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except S3UploadFailedError as exc:  # the transfer manager gave up after botocore's retries
        cause = exc.__context__ or exc.__cause__ or exc
        raise RepositoryError(f"{what} failed: {_error_code(cause)}", transient=_transient(cause)) from None
    except ClientError as exc:
        raise RepositoryError(f"{what} failed: {_error_code(exc)}", transient=_transient(exc)) from None
    except BotoCoreError as exc:
        raise RepositoryError(f"{what} failed: {type(exc).__name__}", transient=True) from None


class S3Storage:
    def __init__(self, bucket: S3Bucket, *, encryption: str = "AES256", kms_key_id: str | None = None,
                 storage_class: str | None = None, part_size: int = 64 * MiB, max_concurrency: int = 4,
                 checksum_algorithm: str = "CRC32") -> None:
        self.prefix = (bucket.bucket_folder or "").strip("/")
        creds = bucket.credentials
        params = creds.aws_client_parameters
        config = {**CLIENT_DEFAULTS, **(params.config or {})}
        tuned = creds.model_copy(update={"aws_client_parameters": params.model_copy(update={"config": config})})
        self.bucket = bucket.model_copy(update={"credentials": tuned, "bucket_folder": self.prefix})
        self.bucket_name = bucket.bucket_name
        self.encryption = encryption
        self.kms_key_id = kms_key_id
        self.storage_class = storage_class
        self.part_size = max(int(part_size), 5 * MiB)  # S3's smallest allowed part
        self.max_concurrency = max(int(max_concurrency), 1)
        self.checksum_algorithm = checksum_algorithm.upper()

    # -- naming ---------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        return self.bucket.credentials.get_s3_client()

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def relative(self, key: str) -> str:
        return key[len(self.prefix) + 1:] if self.prefix else key

    def describe(self) -> str:
        return f"s3://{self.bucket_name}/{self.prefix}" if self.prefix else f"s3://{self.bucket_name}"

    def object_name(self, backup_id: str, name: str) -> str:
        if not is_backup_id(backup_id):
            raise RepositoryError(f"not a backup id: {backup_id!r}")
        if not name or "/" in name or name.startswith("."):
            raise RepositoryError(f"bad file name in manifest: {name!r}")
        return f"backups/{backup_id}/{name}"

    def url(self, backup_id: str, name: str) -> str:
        """The object's address as a user would type it: s3://bucket/prefix/backups/<id>/<name>."""
        return f"s3://{self.bucket_name}/{self.key(self.object_name(backup_id, name))}"

    # -- the reader interface shared with LocalStorage ------------------------------------

    def list_objects(self, under: str = "backups/") -> list[StoredObject]:
        found = []
        with s3_errors(f"listing {self.describe()}/{under}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket_name, Prefix=self.key(under))
            for page in pages:
                for obj in page.get("Contents", []):
                    found.append(StoredObject(self.relative(obj["Key"]), int(obj["Size"]), obj["LastModified"]))
        return found

    def list_backup_ids(self) -> list[str]:
        """Ids of complete backups (those whose manifest is in the bucket), oldest first."""
        ids = set()
        for obj in self.list_objects():
            parts = obj.name.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST and is_backup_id(parts[1]):
                ids.add(parts[1])
        return sorted(ids)

    def read_manifest(self, backup_id: str) -> bytes | None:
        key = self.key(self.object_name(backup_id, MANIFEST))
        from botocore.exceptions import ClientError

        with s3_errors(f"reading s3://{self.bucket_name}/{key}"):
            try:
                return self.client.get_object(Bucket=self.bucket_name, Key=key)["Body"].read()
            except ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise

    def write_manifest(self, backup_id: str, manifest: bytes) -> None:
        self.put_bytes(backup_id, MANIFEST, manifest)

    def open_file(self, backup_id: str, name: str) -> BinaryIO:
        """A streaming reader of the object; a body cut off mid-way is resumed where it broke."""
        raw = _ObjectReader(self, self.key(self.object_name(backup_id, name)))
        return io.BufferedReader(raw, buffer_size=MiB)  # type: ignore[return-value]

    def delete_backup(self, backup_id: str) -> None:
        """Remove the manifest first, so a half-deleted backup is never listed."""
        with s3_errors(f"deleting {self.url(backup_id, MANIFEST)}"):
            self.client.delete_object(Bucket=self.bucket_name, Key=self.key(self.object_name(backup_id, MANIFEST)))
        self.delete_objects([o.name for o in self.list_objects(f"backups/{backup_id}/")])

    # -- what upload and garbage collection need ------------------------------------------

    def extra_args(self) -> dict[str, str]:
        """Server-side encryption and storage class on every object; a checksum per part, so S3
        refuses a part that arrives damaged and keeps a checksum we can compare afterwards."""
        args = {"ServerSideEncryption": self.encryption, "ChecksumAlgorithm": self.checksum_algorithm}
        if self.encryption == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        return args

    def transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
                              max_concurrency=self.max_concurrency, use_threads=True)

    def effective_part_size(self, size: int) -> int | None:
        """The part size the transfer manager will really use for `size` bytes (None: one PUT)."""
        if size < self.part_size:
            return None
        from s3transfer.utils import ChunksizeAdjuster

        return ChunksizeAdjuster().adjust_chunksize(self.part_size, size)

    def put_file(self, path: Path, backup_id: str, name: str) -> str:
        """Upload a local file with the transfer manager (multipart, equal parts); its URL."""
        rel = self.object_name(backup_id, name)
        with s3_errors(f"uploading {path.name} to {self.url(backup_id, name)}"):
            key = self.bucket.upload_from_path(path, rel, ExtraArgs=self.extra_args(),
                                               Config=self.transfer_config())
        if key != self.key(rel):  # prefect-aws joined the folder differently than we list it
            raise RepositoryError(f"uploaded to unexpected key {key!r}, expected {self.key(rel)!r}")
        return self.url(backup_id, name)

    def put_bytes(self, backup_id: str, name: str, data: bytes) -> None:
        key = self.key(self.object_name(backup_id, name))
        with s3_errors(f"writing s3://{self.bucket_name}/{key}"):
            self.client.put_object(Bucket=self.bucket_name, Key=key, Body=data, **self.extra_args())

    def stored_checksum(self, backup_id: str, name: str) -> tuple[int, str | None, str | None]:
        """(size, S3's checksum of our algorithm or None, server-side encryption) of an object."""
        key = self.key(self.object_name(backup_id, name))
        with s3_errors(f"checking s3://{self.bucket_name}/{key}"):
            head = self.client.head_object(Bucket=self.bucket_name, Key=key, ChecksumMode="ENABLED")
        return (int(head["ContentLength"]), head.get(f"Checksum{self.checksum_algorithm}"),
                head.get("ServerSideEncryption"))

    def delete_objects(self, names: list[str]) -> None:
        for i in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self.key(n)} for n in names[i:i + 1000]]
            with s3_errors(f"deleting objects under {self.describe()}"):
                result = self.client.delete_objects(Bucket=self.bucket_name, Delete={"Objects": batch, "Quiet": True})
            if result.get("Errors"):
                first = result["Errors"][0]
                raise RepositoryError(f"could not delete s3://{self.bucket_name}/{first.get('Key')}: "
                                      f"{first.get('Code')}", transient=True)

    def orphan_objects(self) -> dict[str, list[StoredObject]]:
        """Objects of backups that have no manifest, by backup id."""
        objects = self.list_objects()
        complete = {o.name.split("/")[1] for o in objects if o.name.endswith("/" + MANIFEST)}
        orphans: dict[str, list[StoredObject]] = {}
        for o in objects:
            parts = o.name.split("/")
            if len(parts) == 3 and is_backup_id(parts[1]) and parts[1] not in complete:
                orphans.setdefault(parts[1], []).append(o)
        return orphans

    def incomplete_backups(self, stale_after_s: float = 2 * 86400) -> list[str]:
        """Backups with objects but no manifest, untouched for `stale_after_s` (0: all of them)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=stale_after_s)
        return sorted(i for i, objs in self.orphan_objects().items()
                      if stale_after_s <= 0 or all(o.last_modified < cutoff for o in objs))

    def pending_uploads(self, under: str = "backups/") -> list[PendingUpload]:
        found = []
        with s3_errors(f"listing multipart uploads under {self.describe()}/{under}"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket_name, Prefix=self.key(under))
            for page in pages:
                for up in page.get("Uploads", []):
                    found.append(PendingUpload(self.relative(up["Key"]), up["UploadId"], up["Initiated"]))
        return found

    def abort_upload(self, upload: PendingUpload) -> None:
        from botocore.exceptions import ClientError

        with s3_errors(f"aborting the multipart upload of {self.describe()}/{upload.name}"):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket_name, Key=self.key(upload.name),
                                                   UploadId=upload.upload_id)
            except ClientError as exc:
                if _error_code(exc) != "NoSuchUpload":  # already gone: that is what we wanted
                    raise


class _ObjectReader(io.RawIOBase):
    """GetObject's body as a file; resumes with `Range` + `If-Match` when the stream breaks."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        super().__init__()
        self.storage = storage
        self.key = key
        self.url = f"s3://{storage.bucket_name}/{key}"
        self.pos = 0
        self.resumes = 0
        self.etag: str | None = None
        self.length = 0
        self.body: Any = None
        self._open()

    def _open(self) -> None:
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.storage.bucket_name, "Key": self.key}
        if self.etag is not None:
            # The rest of the same object, never the start of a newer one.
            args.update(Range=f"bytes={self.pos}-", IfMatch=self.etag)
        with s3_errors(f"reading {self.url}"):
            try:
                resp = self.storage.client.get_object(**args)
            except ClientError as exc:
                code = _error_code(exc)
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise NotFound(f"{self.url} is missing from the bucket") from None
                if code in ("PreconditionFailed", "412"):
                    raise RepositoryError(f"{self.url} changed while it was being read") from None
                raise
        if self.etag is None:
            self.etag = resp["ETag"]
            self.length = int(resp["ContentLength"])
        self.body = resp["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        import urllib3.exceptions
        from botocore.exceptions import BotoCoreError

        want = len(b)
        while self.pos < self.length:
            try:
                data = self.body.read(want)
            except (BotoCoreError, urllib3.exceptions.HTTPError, OSError):
                data = b""
            if data:
                b[:len(data)] = data
                self.pos += len(data)
                return len(data)
            # The body ended or broke before the object's length: ask for the rest.
            if self.resumes >= MAX_RESUMES:
                raise RepositoryError(f"reading {self.url} kept failing at byte {self.pos} of {self.length}",
                                      transient=True)
            self.resumes += 1
            with contextlib.suppress(Exception):
                self.body.close()
            self._open()
        return 0

    def close(self) -> None:
        if self.body is not None:
            with contextlib.suppress(Exception):
                self.body.close()
        super().close()

"""The one S3 core: client, retries, error mapping, request arguments, batching, resumable reads.

Used by the backup driver (storage/s3.py) and the WAL path (wal/s3.py) alike, so both retry the
same way, say the same one-line errors and honour the same server-side encryption, KMS key and
storage class. boto3 only: no Prefect here (wal-fetch runs as PostgreSQL's restore_command).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pgkeeper.errors import NotFound, RepositoryError
from pgkeeper.settings import S3Target

MiB = 1024 * 1024
# Retries inside botocore (exponential backoff with jitter) for every request; Prefect's task
# retries sit on top of these for failures that outlast them. Ten retries wait out about a
# minute of an unreachable endpoint; AWS_MAX_ATTEMPTS, boto3's own variable (attempts in all,
# the first included), still sets another number: an explicit Config would otherwise silence it.
RETRIES = {"max_attempts": 10, "mode": "standard"}


def retries() -> dict[str, Any]:
    """A fresh dict each time: botocore rewrites the one it is given in place."""
    raw = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return {"total_max_attempts": int(raw), "mode": "standard"}
    return dict(RETRIES)
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120
# A streamed download that breaks mid-body is resumed with a Range request this many times.
MAX_RESUMES = 8
MISSING_CODES = ("NoSuchKey", "404", "NotFound")


def make_client(target: S3Target) -> Any:
    """A boto3 S3 client for `target`; without keys in it, boto3's usual chain applies."""
    import boto3
    from botocore.config import Config

    config = Config(retries=retries(), connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                    s3={"addressing_style": "path"} if target.path_style else None)
    kw: dict[str, Any] = {"endpoint_url": target.endpoint_url, "region_name": target.region, "config": config}
    creds = target.credentials()
    if not creds["access_key_id"] and target.credentials_file:
        try:
            with open(target.credentials_file) as f:
                creds = _read_credentials(f.read())
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"cannot read the S3 credentials file {target.credentials_file}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
    if creds["access_key_id"]:
        kw.update(aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
                  aws_session_token=creds["session_token"])
    session = boto3.session.Session(profile_name=target.profile) if target.profile else boto3
    return session.client("s3", **kw)


def _read_credentials(text: str) -> dict[str, Any]:
    import json

    data = json.loads(text)
    return {k: data.get(k) for k in ("access_key_id", "secret_access_key", "session_token")}


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or type(exc).__name__


def is_missing(exc: BaseException) -> bool:
    return error_code(exc) in MISSING_CODES


def is_transient(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not response:
        return True  # a connection that broke: worth another try
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    # 403/404-class answers do not get better by waiting; 5xx and throttling might.
    return status >= 500 or error_code(exc) in ("SlowDown", "RequestTimeout", "Throttling")


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """botocore failures as one plain RepositoryError line (no credentials, no traceback)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except S3UploadFailedError as exc:  # the transfer manager gave up after botocore's retries
        cause = exc.__context__ or exc.__cause__ or exc
        raise RepositoryError(f"{what} failed: {error_code(cause)}", transient=is_transient(cause)) from None
    except ClientError as exc:
        raise RepositoryError(f"{what} failed: {error_code(exc)}", transient=is_transient(exc)) from None
    except BotoCoreError as exc:
        raise RepositoryError(f"{what} failed: {type(exc).__name__}", transient=True) from None


def put_args(target: S3Target, checksum: str | None = None) -> dict[str, str]:
    """Server-side encryption, KMS key and storage class for every object written; a checksum
    S3 verifies on arrival when asked."""
    args = {"ServerSideEncryption": target.sse}
    if target.sse == "aws:kms" and target.kms_key_id:
        args["SSEKMSKeyId"] = target.kms_key_id
    if target.storage_class:
        args["StorageClass"] = target.storage_class
    if checksum:
        args["ChecksumAlgorithm"] = checksum
    return args


class Bucket:
    """One bucket prefix: keys are named relative to it."""

    def __init__(self, target: S3Target, client: Any = None) -> None:
        self.target = target
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.target)
        return self._client

    @property
    def name(self) -> str:
        return self.target.bucket

    def key(self, rel: str) -> str:
        return self.target.key(rel)

    def relative(self, key: str) -> str:
        return key[len(self.target.prefix) + 1:] if self.target.prefix else key

    def url(self, rel: str) -> str:
        return f"s3://{self.target.bucket}/{self.key(rel)}"

    def list(self, under: str) -> Iterator[tuple[str, int, datetime]]:
        """(relative name, size, last modified) of every object under `under`."""
        with s3_errors(f"listing {self.url(under)}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=self.key(under))
            for page in pages:
                for obj in page.get("Contents", []):
                    yield self.relative(obj["Key"]), int(obj["Size"]), obj["LastModified"]

    def open(self, rel: str) -> io.BufferedReader:
        """A streaming reader; a body cut off mid-way is resumed where it broke."""
        return io.BufferedReader(ObjectReader(self, self.key(rel)), buffer_size=MiB)

    def get(self, rel: str) -> bytes | None:
        """A whole (small) object, resumed like a large one when its body is cut; None if absent."""
        try:
            with self.open(rel) as f:
                return f.read()
        except NotFound:
            return None

    def put(self, rel: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """One small object in one request; S3 refuses the body if it arrives different from
        the sha256 sent with it."""
        import base64
        import hashlib

        args = put_args(self.target)
        args["ChecksumSHA256"] = base64.b64encode(hashlib.sha256(data).digest()).decode()
        if metadata:
            args["Metadata"] = metadata  # type: ignore[assignment]
        with s3_errors(f"writing {self.url(rel)}"):
            self.client.put_object(Bucket=self.name, Key=self.key(rel), Body=data, **args)

    def head(self, rel: str, checksum_mode: bool = False) -> dict[str, Any]:
        with s3_errors(f"checking {self.url(rel)}"):
            if checksum_mode:
                return self.client.head_object(Bucket=self.name, Key=self.key(rel), ChecksumMode="ENABLED")
            return self.client.head_object(Bucket=self.name, Key=self.key(rel))

    def copy_to_class(self, rel: str, storage_class: str) -> None:
        """Rewrite an object onto itself in another storage class, server-side (no bytes pass
        through here); the transfer manager copies objects over 5 GB in parts."""
        args: dict[str, Any] = {k: v for k, v in put_args(self.target).items() if k != "StorageClass"}
        args.update(StorageClass=storage_class, MetadataDirective="COPY")
        key = self.key(rel)
        with s3_errors(f"moving {self.url(rel)} to {storage_class}"):
            self.client.copy({"Bucket": self.name, "Key": key}, self.name, key, ExtraArgs=args)

    def restore(self, rel: str, days: int, retrieval_tier: str) -> None:
        """Ask S3 for a readable copy of an archived object; one already under way is not an error."""
        from botocore.exceptions import ClientError

        with s3_errors(f"requesting a restore of {self.url(rel)}"):
            try:
                self.client.restore_object(Bucket=self.name, Key=self.key(rel), RestoreRequest={
                    "Days": days, "GlacierJobParameters": {"Tier": retrieval_tier}})
            except ClientError as exc:
                if error_code(exc) != "RestoreAlreadyInProgress":
                    raise

    def delete(self, rels: list[str]) -> None:
        for i in range(0, len(rels), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self.key(n)} for n in rels[i:i + 1000]]
            with s3_errors(f"deleting objects under {self.target.describe()}"):
                result = self.client.delete_objects(Bucket=self.name, Delete={"Objects": batch, "Quiet": True})
            if result.get("Errors"):
                first = result["Errors"][0]
                raise RepositoryError(f"could not delete s3://{self.name}/{first.get('Key')}: "
                                      f"{first.get('Code')}", transient=True)


class ObjectReader(io.RawIOBase):
    """GetObject's body as a file; resumes with `Range` + `If-Match` when the stream breaks."""

    def __init__(self, bucket: Bucket, key: str) -> None:
        super().__init__()
        self.bucket = bucket
        self.key = key
        self.url = f"s3://{bucket.name}/{key}"
        self.pos = 0
        self.resumes = 0
        self.etag: str | None = None
        self.length = 0
        self.body: Any = None
        self._open()

    def _open(self) -> None:
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.bucket.name, "Key": self.key}
        if self.etag is not None:
            # The rest of the same object, never the start of a newer one.
            args.update(Range=f"bytes={self.pos}-", IfMatch=self.etag)
        with s3_errors(f"reading {self.url}"):
            try:
                resp = self.bucket.client.get_object(**args)
            except ClientError as exc:
                code = error_code(exc)
                if code in MISSING_CODES:
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

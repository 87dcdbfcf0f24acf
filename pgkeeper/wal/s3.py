"""The WAL archive in S3: boto3 only (no Prefect), same object names as the local spool.

Used by wal-fetch (restore_command, on a machine that may have nothing but the bucket),
by the wal-ship flow's tasks and by WAL retention.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pgkeeper.errors import PgkeeperError
from pgkeeper.wal.config import S3Target
from pgkeeper.wal.naming import check_wal_name, parse_object_name, wal_dir


class S3WalError(PgkeeperError):
    transient = True


class S3WalStore:
    def __init__(self, target: S3Target, client: Any = None) -> None:
        self.target = target
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            kw: dict[str, Any] = {"endpoint_url": self.target.endpoint_url,
                                  "region_name": self.target.region,
                                  "config": Config(retries={"max_attempts": 5, "mode": "standard"},
                                                   connect_timeout=10, read_timeout=60)}
            if self.target.access_key_id:
                kw["aws_access_key_id"] = self.target.access_key_id
                kw["aws_secret_access_key"] = self.target.secret_access_key
            self._client = boto3.client("s3", **kw)
        return self._client

    def describe(self) -> str:
        return self.target.describe()

    def key(self, rel: str) -> str:
        return self.target.wal_prefix() + rel

    def _list(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix` relative to the wal/ prefix."""
        from botocore.exceptions import BotoCoreError, ClientError

        base = self.target.wal_prefix()
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.target.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []):
                    yield item["Key"][len(base):]
        except (BotoCoreError, ClientError) as exc:
            raise S3WalError(f"cannot list {self.describe()}: {_why(exc)}") from None

    def find(self, name: str) -> list[tuple[str, str]]:
        """[(sha256, relative key)] of stored copies of `name`: one listing."""
        check_wal_name(name)
        found = []
        for rel in self._list(f"{wal_dir(name)}/{name}-"):
            parsed = parse_object_name(rel.rsplit("/", 1)[-1])
            if parsed and parsed[0] == name:
                found.append((parsed[1], rel))
        return found

    def objects(self) -> Iterator[tuple[str, str, str]]:
        """(wal name, sha256, relative key) of every stored WAL object."""
        for rel in self._list(""):
            parsed = parse_object_name(rel.rsplit("/", 1)[-1])
            if parsed:
                yield parsed[0], parsed[1], rel

    def listing(self) -> Iterator[tuple[str, str, str, float]]:
        """(wal name, sha256, relative key, upload time in epoch seconds) of every WAL object."""
        from botocore.exceptions import BotoCoreError, ClientError

        base = self.target.wal_prefix()
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.target.bucket,
                                                                               Prefix=base):
                for item in page.get("Contents", []):
                    rel = item["Key"][len(base):]
                    parsed = parse_object_name(rel.rsplit("/", 1)[-1])
                    if parsed:
                        yield parsed[0], parsed[1], rel, item["LastModified"].timestamp()
        except (BotoCoreError, ClientError) as exc:
            raise S3WalError(f"cannot list {self.describe()}: {_why(exc)}") from None

    def get(self, rel: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.target.bucket, Key=self.key(rel))["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise S3WalError(f"cannot read {self.key(rel)} from bucket {self.target.bucket}: {_why(exc)}") from None

    def read_identity(self) -> bytes | None:
        """The archive's identity record in the bucket (wal/identity.py), or None if absent."""
        from botocore.exceptions import BotoCoreError, ClientError

        from pgkeeper.wal.identity import IDENTITY_FILE

        try:
            return self.client.get_object(Bucket=self.target.bucket, Key=self.key(IDENTITY_FILE))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise S3WalError(f"cannot read {self.key(IDENTITY_FILE)}: {_why(exc)}") from None
        except BotoCoreError as exc:
            raise S3WalError(f"cannot read {self.key(IDENTITY_FILE)}: {_why(exc)}") from None

    def write_identity(self, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        from pgkeeper.wal.identity import IDENTITY_FILE

        try:
            self.client.put_object(Bucket=self.target.bucket, Key=self.key(IDENTITY_FILE), Body=data,
                                   ServerSideEncryption="AES256")
        except (BotoCoreError, ClientError) as exc:
            raise S3WalError(f"cannot write {self.key(IDENTITY_FILE)}: {_why(exc)}") from None

    def put_file(self, rel: str, path: str, sha256: str) -> None:
        """Upload one object; S3 checks the bytes against the sha256 we send with them."""
        import base64
        import hashlib

        from botocore.exceptions import BotoCoreError, ClientError

        with open(path, "rb") as f:
            body = f.read()
        stored_sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
        try:
            self.client.put_object(Bucket=self.target.bucket, Key=self.key(rel), Body=body,
                                   ChecksumSHA256=stored_sha, ServerSideEncryption="AES256",
                                   Metadata={"wal-sha256": sha256})
        except (BotoCoreError, ClientError) as exc:
            raise S3WalError(f"cannot upload {self.key(rel)} to bucket {self.target.bucket}: {_why(exc)}") from None

    def delete(self, rels: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for i in range(0, len(rels), 1000):
            batch = [{"Key": self.key(r)} for r in rels[i:i + 1000]]
            try:
                self.client.delete_objects(Bucket=self.target.bucket, Delete={"Objects": batch, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise S3WalError(f"cannot delete WAL from bucket {self.target.bucket}: {_why(exc)}") from None


def _why(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

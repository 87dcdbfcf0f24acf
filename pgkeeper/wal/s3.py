"""The WAL archive in S3, on the one S3 core (storage/s3core.py): same object names as the
local spool, same retries, errors, encryption and storage class as the backups.

Used by wal-fetch (restore_command, on a machine that may have nothing but the bucket),
by the wal-ship flow's tasks and by WAL retention. No Prefect.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pgkeeper.settings import S3Target
from pgkeeper.storage.s3core import Bucket
from pgkeeper.wal.naming import check_wal_name, parse_object_name, wal_dir


class S3WalStore:
    def __init__(self, target: S3Target, client: Any = None) -> None:
        self.target = target
        self.bucket = Bucket(target, client)

    @property
    def client(self) -> Any:
        return self.bucket.client

    def describe(self) -> str:
        return self.target.describe_wal()

    def _rel(self, rel: str) -> str:
        return "wal/" + rel

    def listing(self) -> Iterator[tuple[str, str, str, float]]:
        """(wal name, sha256, relative key, upload time in epoch seconds) of every WAL object."""
        for name, _size, modified in self.bucket.list("wal/"):
            rel = name[len("wal/"):]
            parsed = parse_object_name(rel.rsplit("/", 1)[-1])
            if parsed:
                yield parsed[0], parsed[1], rel, modified.timestamp()

    def find(self, name: str) -> list[tuple[str, str]]:
        """[(sha256, relative key)] of stored copies of `name`: one listing."""
        check_wal_name(name)
        found = []
        for obj, _size, _modified in self.bucket.list(f"wal/{wal_dir(name)}/{name}-"):
            parsed = parse_object_name(obj.rsplit("/", 1)[-1])
            if parsed and parsed[0] == name:
                found.append((parsed[1], obj[len("wal/"):]))
        return found

    def objects(self) -> Iterator[tuple[str, str, str]]:
        """(wal name, sha256, relative key) of every stored WAL object."""
        for name, sha, rel, _at in self.listing():
            yield name, sha, rel

    def get(self, rel: str) -> bytes:
        from pgkeeper.errors import NotFound

        data = self.bucket.get(self._rel(rel))
        if data is None:
            raise NotFound(f"{self.bucket.url(self._rel(rel))} is missing from the bucket")
        return data

    def read_identity(self) -> bytes | None:
        """The archive's identity record in the bucket (wal/identity.py), or None if absent."""
        from pgkeeper.wal.identity import IDENTITY_FILE

        return self.bucket.get(self._rel(IDENTITY_FILE))

    def write_identity(self, data: bytes) -> None:
        from pgkeeper.wal.identity import IDENTITY_FILE

        self.bucket.put(self._rel(IDENTITY_FILE), data)

    def put_file(self, rel: str, path: str, sha256: str) -> None:
        """Upload one object; S3 checks the bytes against the sha256 we send with them."""
        with open(path, "rb") as f:
            body = f.read()
        self.bucket.put(self._rel(rel), body, metadata={"wal-sha256": sha256})

    def delete(self, rels: list[str]) -> None:
        self.bucket.delete([self._rel(r) for r in rels])

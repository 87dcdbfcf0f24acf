"""The S3 repository driver: the storage interface over a bucket prefix (AWS S3, MinIO, R2,
moto: anything with an endpoint_url), on the one S3 core (s3core.py).

Layout under the prefix, mirroring the local driver:
    <prefix>/backups/<backup_id>/<data files>, manifest.json (uploaded last)
    <prefix>/wal/...                                   (WAL archive, see pgkeeper.wal)
A backup prefix without manifest.json is incomplete: never listed, collected as garbage.

An upload is proven before its manifest goes up: S3 checks a checksum per part (CRC32 by
default, SHA-256 if asked) as the parts arrive, and afterwards the object's own checksum is
compared with one computed here from the source, in the same pass that re-checks the source
against the manifest's sha256. CRC32 is the default because it keeps the upload at the speed
of a bare boto3 upload (see benchmarks/upload.py); the strong link to the manifest is sha256.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from pgkeeper.errors import IntegrityError, NotFound, RepositoryError
from pgkeeper.manifest import StoredFile
from pgkeeper.names import is_backup_id
from pgkeeper.settings import S3Target
from pgkeeper.storage.interface import MANIFEST, ArchiveState, DriverBase, Storage, check_file_name, check_record_name
from pgkeeper.storage.s3core import Bucket, MiB, put_args, s3_errors
from pgkeeper.storage.streams import CHUNK, HashingReader, HashingWriter, check_digest, sha256_of

READ_CHUNK = 8 * MiB


@dataclass(frozen=True)
class StoredObject:
    """One object under the repository prefix, named relative to it."""
    name: str  # e.g. "backups/backup_20240315_143022/crm.dump.zst"
    size: int
    last_modified: datetime


class _Crc32:
    """zlib's CRC32 behind hashlib's interface (S3 encodes it as 4 big-endian bytes)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _new_checksum(algorithm: str) -> Any:
    return _Crc32() if algorithm == "CRC32" else hashlib.sha256()


def s3_checksum(data: bytes, algorithm: str) -> str:
    c = _new_checksum(algorithm)
    c.update(data)
    return base64.b64encode(c.digest()).decode()


def file_digests(path: Path, part_size: int | None, algorithm: str = "SHA256") -> tuple[str, str]:
    """(sha256 hex of the file, the checksum S3 should report for it with `algorithm`).

    S3's checksum of a multipart object is the checksum of the parts' checksums, so the parts
    are checksummed on the same single read that re-computes the file's sha256.
    """
    whole = hashlib.sha256()
    whole_s3 = _new_checksum(algorithm)
    parts: list[bytes] = []
    with open(path, "rb") as f:
        if part_size is None:
            while chunk := f.read(READ_CHUNK):
                whole.update(chunk)
                whole_s3.update(chunk)
        while part_size is not None:
            part = _new_checksum(algorithm)
            got = 0
            while got < part_size and (chunk := f.read(min(READ_CHUNK, part_size - got))):
                whole.update(chunk)
                part.update(chunk)
                got += len(chunk)
            if got:
                parts.append(part.digest())
            if got < part_size:
                break
    if part_size is None:
        return whole.hexdigest(), base64.b64encode(whole_s3.digest()).decode()
    composite = _new_checksum(algorithm)
    composite.update(b"".join(parts))
    return whole.hexdigest(), f"{base64.b64encode(composite.digest()).decode()}-{len(parts)}"


def _same_checksum(stored: str, expected: str) -> bool:
    # Some servers append "-<parts>" to a composite checksum, some do not.
    return stored.split("-")[0] == expected.split("-")[0]


class S3Storage(DriverBase):
    def __init__(self, target: S3Target, *, part_size: int = 64 * MiB, max_concurrency: int = 4,
                 checksum_algorithm: str = "CRC32", client: Any = None) -> None:
        self.target = target
        self.bucket = Bucket(target, client)
        self.part_size = max(int(part_size), 5 * MiB)  # S3's smallest allowed part
        self.max_concurrency = max(int(max_concurrency), 1)
        self.checksum_algorithm = checksum_algorithm.upper()

    # -- naming ---------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        return self.bucket.client

    @property
    def bucket_name(self) -> str:
        return self.target.bucket

    @property
    def prefix(self) -> str:
        return self.target.prefix

    def describe(self) -> str:
        return self.target.describe()

    def location(self, backup_id: str) -> str:
        return self.bucket.url(f"backups/{backup_id}")

    def object_name(self, backup_id: str, name: str) -> str:
        if not is_backup_id(backup_id):
            raise RepositoryError(f"not a backup id: {backup_id!r}")
        return f"backups/{backup_id}/{check_file_name(name)}"

    def url(self, backup_id: str, name: str) -> str:
        """The object's address as a user would type it: s3://bucket/prefix/backups/<id>/<name>."""
        return self.bucket.url(self.object_name(backup_id, name))

    def ensure_writable(self) -> None:
        pass  # a bucket has no directory to create; a denied write fails on the first object

    # -- the catalog ----------------------------------------------------------------------

    def list_objects(self, under: str = "backups/") -> list[StoredObject]:
        return [StoredObject(n, s, m) for n, s, m in self.bucket.list(under)]

    def list_backup_ids(self) -> list[str]:
        """Ids of complete backups (those whose manifest is in the bucket), oldest first."""
        return sorted({o.name.split("/")[1] for o in self.list_objects() if _is_manifest(o.name)})

    def claimed_ids(self) -> list[str]:
        return sorted({o.name.split("/")[1] for o in self.list_objects() if _backup_of(o.name)})

    def read_manifest(self, backup_id: str) -> bytes | None:
        return self.bucket.get(self.object_name(backup_id, MANIFEST))

    # -- writing --------------------------------------------------------------------------

    def begin_backup(self, backup_id: str) -> None:
        if self.list_objects(f"backups/{backup_id}/"):
            raise RepositoryError(f"backup {backup_id} already exists in {self.describe()}")

    @contextmanager
    def write_file(self, backup_id: str, name: str) -> Iterator[HashingWriter]:
        """Spooled to a local temp file, then uploaded with the transfer manager."""
        self.object_name(backup_id, name)
        with tempfile.NamedTemporaryFile(prefix="pgkeeper-s3-") as tmp:
            writer = HashingWriter(tmp)  # type: ignore[arg-type]
            yield writer
            tmp.flush()
            self._upload(Path(tmp.name), backup_id, name, writer.sha256)

    def store_file(self, path: Path, backup_id: str, name: str) -> StoredFile:
        with open(path, "rb") as f:
            sha, size = sha256_of(f)
        self._upload(path, backup_id, name, sha)
        path.unlink()
        return StoredFile(name=name, size=size, sha256=sha)

    def copy_from(self, source: Storage, backup_id: str, file: StoredFile) -> str:
        local_path = getattr(source, "file_path", None)
        if local_path is not None:  # a local file: upload it straight, hashed on a parallel read
            return self._upload(local_path(backup_id, file.name), backup_id, file.name, file.sha256, file.size)
        with tempfile.NamedTemporaryFile(prefix="pgkeeper-s3-") as tmp:
            with HashingReader(source.open_file(backup_id, file.name)) as reader:
                shutil.copyfileobj(reader, tmp, CHUNK)  # type: ignore[misc]
                check_digest(reader, file.size, file.sha256, f"{source.location(backup_id)}/{file.name}")
            tmp.flush()
            return self._upload(Path(tmp.name), backup_id, file.name, file.sha256, file.size)

    def _upload(self, path: Path, backup_id: str, name: str, sha256: str, size: int | None = None) -> str:
        """Upload a local file with the transfer manager (multipart, equal parts) and prove the
        stored object holds exactly `sha256`'s bytes; how it was proven."""
        from boto3.s3.transfer import TransferConfig

        rel = self.object_name(backup_id, name)
        url = self.url(backup_id, name)
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            raise RepositoryError(f"{path} is missing: cannot upload {backup_id}") from None
        config = TransferConfig(multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
                                max_concurrency=self.max_concurrency, use_threads=True)
        # Hash locally while the transfer manager uploads: hashlib releases the GIL.
        with ThreadPoolExecutor(1, thread_name_prefix="local-digest") as pool:
            digests = pool.submit(file_digests, path, self.effective_part_size(actual_size), self.checksum_algorithm)
            with s3_errors(f"uploading {path.name} to {url}"):
                self.client.upload_file(str(path), self.bucket_name, self.bucket.key(rel),
                                        ExtraArgs=put_args(self.target, self.checksum_algorithm), Config=config)
            local_sha, expected = digests.result()
        if local_sha != sha256:
            raise IntegrityError(f"{path}: sha256 differs from the manifest; the local backup is damaged, "
                                 "its manifest was not uploaded")
        head = self.bucket.head(rel, checksum_mode=True)
        stored_size, stored_sum = int(head["ContentLength"]), head.get(f"Checksum{self.checksum_algorithm}")
        if stored_size != (actual_size if size is None else size):
            raise IntegrityError(f"{url}: {stored_size} bytes stored, the manifest says {size}", transient=True)
        if stored_sum and _same_checksum(stored_sum, expected):
            return f"{name}: sha256 matches the manifest, S3 {self.checksum_algorithm} checksum matches"
        # No checksum from this server (or parts split differently than we assumed): read it back.
        with self.open_file(backup_id, name) as f:
            if sha256_of(f)[0] != sha256:
                raise IntegrityError(f"{url}: sha256 of the stored object differs from the manifest", transient=True)
        return f"{name}: sha256 read back and matches"

    def effective_part_size(self, size: int) -> int | None:
        """The part size the transfer manager will really use for `size` bytes (None: one PUT)."""
        if size < self.part_size:
            return None
        from s3transfer.utils import ChunksizeAdjuster

        return ChunksizeAdjuster().adjust_chunksize(self.part_size, size)

    def finish_backup(self, backup_id: str, manifest: bytes) -> None:
        """The manifest last, with a checksum S3 verifies: from now on the bucket lists this backup."""
        self.write_manifest(backup_id, manifest)

    def write_manifest(self, backup_id: str, manifest: bytes) -> None:
        rel = self.object_name(backup_id, MANIFEST)
        self.bucket.put(rel, manifest)

    def abandon_backup(self, backup_id: str) -> None:
        self.bucket.delete([o.name for o in self.list_objects(f"backups/{backup_id}/")])

    # -- reading --------------------------------------------------------------------------

    def open_file(self, backup_id: str, name: str) -> BinaryIO:
        """A streaming reader of the object; a body cut off mid-way is resumed where it broke."""
        return self.bucket.open(self.object_name(backup_id, name))  # type: ignore[return-value]

    def stat_file(self, backup_id: str, name: str) -> int:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket_name,
                                               Key=self.bucket.key(self.object_name(backup_id, name)))["ContentLength"])
        except ClientError:
            raise NotFound(f"{self.url(backup_id, name)} is missing from the bucket") from None

    def server_side_encryption(self, backup_id: str, name: str) -> str | None:
        return self.bucket.head(self.object_name(backup_id, name)).get("ServerSideEncryption")

    # -- storage classes (retention tiers) -------------------------------------------------

    def _data_objects(self, backup_id: str) -> list[str]:
        return [o.name for o in self.list_objects(f"backups/{backup_id}/")
                if _backup_of(o.name) and not o.name.endswith("/" + MANIFEST)]

    def archive_state(self, backup_id: str) -> ArchiveState:
        """From each data object's HEAD: its class and its `Restore` header
        (ongoing-request="true" | "false", expiry-date="...")."""
        from email.utils import parsedate_to_datetime

        from pgkeeper.retention import ARCHIVE_CLASSES

        classes, readable, restoring, until = set(), True, False, None
        for rel in self._data_objects(backup_id):
            head = self.bucket.head(rel)
            cls = head.get("StorageClass") or "STANDARD"
            classes.add(cls)
            if cls not in ARCHIVE_CLASSES:
                continue
            restore = head.get("Restore") or ""
            if 'ongoing-request="false"' in restore:
                expiry = restore.partition('expiry-date="')[2].rstrip('"')
                with contextlib.suppress(TypeError, ValueError):  # unparsable: expiry unknown
                    at = parsedate_to_datetime(expiry)
                    until = at if until is None or at < until else until
                continue
            readable = False
            restoring = restoring or 'ongoing-request="true"' in restore
        # Several classes (a move interrupted half-way): the most archived one decides.
        from pgkeeper.retention import class_rank

        cls = max(classes, key=class_rank) if classes else "STANDARD"
        return ArchiveState(cls, readable=readable, restoring=restoring and not readable,
                            ready_until=until if readable else None)

    def set_storage_class(self, backup_id: str, storage_class: str) -> int:
        moved = 0
        for rel in self._data_objects(backup_id):
            # An object already there (a move interrupted half-way, run again) is left alone: an
            # archived one could not even be copied.
            if (self.bucket.head(rel).get("StorageClass") or "STANDARD") != storage_class:
                self.bucket.copy_to_class(rel, storage_class)
                moved += 1
        return moved

    def request_restore(self, backup_id: str, days: int, retrieval_tier: str) -> ArchiveState:
        from pgkeeper.retention import ARCHIVE_CLASSES

        for rel in self._data_objects(backup_id):
            head = self.bucket.head(rel)
            if (head.get("StorageClass") or "STANDARD") in ARCHIVE_CLASSES and not head.get("Restore"):
                self.bucket.restore(rel, days, retrieval_tier)
        return self.archive_state(backup_id)

    # -- removing -------------------------------------------------------------------------

    def delete_backup(self, backup_id: str) -> None:
        """Remove the manifest first, so a half-deleted backup is never listed."""
        self.bucket.delete([self.object_name(backup_id, MANIFEST)])
        self.abandon_backup(backup_id)

    def orphan_objects(self) -> dict[str, list[StoredObject]]:
        """Objects of backups that have no manifest, by backup id."""
        objects = self.list_objects()
        complete = {o.name.split("/")[1] for o in objects if _is_manifest(o.name)}
        orphans: dict[str, list[StoredObject]] = {}
        for o in objects:
            backup_id = _backup_of(o.name)
            if backup_id and backup_id not in complete:
                orphans.setdefault(backup_id, []).append(o)
        return orphans

    def incomplete_backups(self, stale_after_s: float = 2 * 86400) -> list[str]:
        """Backups with objects but no manifest, untouched for `stale_after_s` (0: all of them)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=stale_after_s)
        return sorted(i for i, objs in self.orphan_objects().items()
                      if stale_after_s <= 0 or all(o.last_modified < cutoff for o in objs))

    def clear_partial_writes(self, stale_after_s: float) -> int:
        """Abort multipart uploads started more than `stale_after_s` ago; how many."""
        from botocore.exceptions import ClientError

        cutoff = datetime.now(UTC) - timedelta(seconds=stale_after_s)
        aborted = 0
        with s3_errors(f"listing multipart uploads under {self.describe()}/backups/"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket_name, Prefix=self.bucket.key("backups/"))
            uploads = [u for page in pages for u in page.get("Uploads", [])]
        for up in uploads:
            if up["Initiated"] >= cutoff:
                continue
            with s3_errors(f"aborting the multipart upload of s3://{self.bucket_name}/{up['Key']}"):
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket_name, Key=up["Key"],
                                                       UploadId=up["UploadId"])
                except ClientError as exc:
                    if "NoSuchUpload" not in str(exc):  # already gone: that is what we wanted
                        raise
            aborted += 1
        return aborted

    def write_record(self, folder: str, name: str, data: bytes) -> str:
        rel = check_record_name(folder, name)
        self.bucket.put(rel, data)
        return self.bucket.url(rel)

    def read_records(self, folder: str) -> list[bytes]:
        names = sorted(n for n, _size, _at in self.bucket.list(check_record_name(folder, "x")[:-1]))
        return [data for n in names if (data := self.bucket.get(n)) is not None]

    # -- room and scratch -----------------------------------------------------------------

    def free_space(self) -> None:
        return None

    @contextmanager
    def scratch(self, purpose: str) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix=f"pgkeeper-{purpose}-", dir=os.environ.get("PGKEEPER_WORK_DIR")))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def _backup_of(name: str) -> str | None:
    parts = name.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "backups" and is_backup_id(parts[1]) else None


def _is_manifest(name: str) -> bool:
    return _backup_of(name) is not None and name.endswith("/" + MANIFEST)

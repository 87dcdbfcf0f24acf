"""Offsite copies: upload a finished backup to S3 (manifest last), fetch one back, collect debris.

An upload is proven before its manifest goes up: S3 checks a checksum per part (CRC32 by
default, SHA-256 if the block asks) as the parts arrive, and afterwards the object's own
checksum is compared with one computed here from the local file, in the same pass that
re-checks the file against the manifest's sha256. So the manifest in the bucket is only
written once every byte it describes is known to be there. CRC32 is the default because it
keeps the upload at the speed of a bare boto3 upload (see benchmarks/upload.py); the strong
link to the manifest is the local sha256.
"""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.errors import IntegrityError, RepositoryError
from pgkeeper.fmt import human_bytes
from pgkeeper.manifest import Manifest, StoredFile
from pgkeeper.storage.local import LocalStorage
from pgkeeper.storage.s3 import MANIFEST, S3Storage
from pgkeeper.tasks.policy import RETRYABLE

READ_CHUNK = 8 * 1024 * 1024


class UploadResult(BaseModel):
    backup_id: str
    location: str  # s3://bucket/prefix/backups/<id>/
    files: int
    bytes: int
    seconds: float
    checks: list[str]


class GarbageReport(BaseModel):
    source: str
    location: str
    incomplete_backups: list[str] = []
    deleted_objects: int = 0
    aborted_uploads: int = 0

    def summary(self) -> str:
        return (f"{len(self.incomplete_backups)} incomplete backup(s), {self.deleted_objects} orphan object(s), "
                f"{self.aborted_uploads} unfinished upload(s) removed from {self.location}")


class _Crc32:
    """zlib's CRC32 behind hashlib's interface (S3 encodes it as 4 big-endian bytes)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _new_checksum(algorithm: str):  # -> hashlib-like
    return _Crc32() if algorithm == "CRC32" else hashlib.sha256()


def local_digests(path: Path, part_size: int | None, algorithm: str = "SHA256") -> tuple[str, str]:
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


def read_back_sha256(s3: S3Storage, backup_id: str, name: str) -> str:
    digest = hashlib.sha256()
    with s3.open_file(backup_id, name) as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def upload_checked(s3: S3Storage, local: LocalStorage, backup_id: str, file: StoredFile) -> str:
    """Upload one file and prove the stored object is the manifest's bytes; how it was proven."""
    path = local.file_path(backup_id, file.name)
    url = s3.url(backup_id, file.name)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise RepositoryError(f"{path} is missing: cannot upload {backup_id}") from None
    # Hash locally while the transfer manager uploads: hashlib releases the GIL.
    with ThreadPoolExecutor(1, thread_name_prefix="local-digest") as pool:
        digests = pool.submit(local_digests, path, s3.effective_part_size(size), s3.checksum_algorithm)
        s3.put_file(path, backup_id, file.name)
        local_sha, expected = digests.result()
    if local_sha != file.sha256:
        raise IntegrityError(f"{path}: sha256 differs from the manifest; the local backup is damaged, "
                             "its manifest was not uploaded")
    stored_size, stored_sum, _sse = s3.stored_checksum(backup_id, file.name)
    if stored_size != file.size:
        raise IntegrityError(f"{url}: {stored_size} bytes stored, the manifest says {file.size}", transient=True)
    if stored_sum and _same_checksum(stored_sum, expected):
        return f"{file.name}: sha256 matches the manifest, S3 {s3.checksum_algorithm} checksum matches"
    # No checksum from this server (or parts split differently than we assumed): read it back.
    if read_back_sha256(s3, backup_id, file.name) != file.sha256:
        raise IntegrityError(f"{url}: sha256 of the stored object differs from the manifest", transient=True)
    return f"{file.name}: sha256 read back and matches"


@task(name="upload-offsite", cache_policy=NO_CACHE, **RETRYABLE)
def upload_backup(repo: BackupRepository, backup_id: str) -> UploadResult:
    """Copy a complete local backup to the bucket: data files, each proven, then the manifest."""
    logger = get_run_logger()
    local, s3 = repo.local(), repo.s3()
    data = local.read_manifest(backup_id)
    if data is None:
        raise RepositoryError(f"backup {backup_id} has no manifest in {local.describe()}: nothing to upload")
    manifest = Manifest.from_bytes(data)
    started = time.monotonic()
    location = s3.url(backup_id, MANIFEST).rsplit("/", 1)[0] + "/"
    if s3.read_manifest(backup_id) == data:  # a retry after the manifest went up: done already
        logger.info("backup %s is already in %s", backup_id, location)
        return UploadResult(backup_id=backup_id, location=location, files=len(manifest.files),
                            bytes=manifest.size, seconds=0.0, checks=["already uploaded, manifest identical"])
    checks = []
    for file in manifest.files:
        checks.append(upload_checked(s3, local, backup_id, file))
        logger.info("uploaded %s (%s): %s", s3.url(backup_id, file.name), human_bytes(file.size), checks[-1])
    s3.write_manifest(backup_id, data)  # last: from now on the bucket lists this backup
    _size, stored_sum, _sse = s3.stored_checksum(backup_id, MANIFEST)
    whole = _new_checksum(s3.checksum_algorithm)
    whole.update(data)
    if stored_sum and not _same_checksum(stored_sum, base64.b64encode(whole.digest()).decode()):
        raise IntegrityError(f"{s3.url(backup_id, MANIFEST)}: checksum differs from the local manifest",
                             transient=True)
    seconds = time.monotonic() - started
    logger.info("backup %s is in %s (%s in %.1f s)", backup_id, location, human_bytes(manifest.size), seconds)
    return UploadResult(backup_id=backup_id, location=location, files=len(manifest.files), bytes=manifest.size,
                        seconds=seconds, checks=checks)


@task(name="find-missing-offsite", cache_policy=NO_CACHE, **RETRYABLE)
def backups_missing_offsite(repo: BackupRepository) -> list[tuple[str, str]]:
    """(backup id, database) of complete local backups with no complete copy in the bucket,
    oldest first: an upload that never finished, or uploads switched on after they were made."""
    from pgkeeper.catalog import list_backups

    offsite = set(repo.s3().list_backup_ids())  # one listing: ids whose manifest is in the bucket
    return [(m.backup_id, m.database) for m in list_backups(repo.local()) if m.backup_id not in offsite]


def fetch_checked(s3: S3Storage, backup_id: str, file: StoredFile, out_write) -> None:  # noqa: ANN001
    """Stream one stored object into `out_write`; refuse it, naming the object, if it is not the
    manifest's bytes. Whatever reached `out_write` is untrusted until this returns."""
    digest = hashlib.sha256()
    size = 0
    with s3.open_file(backup_id, file.name) as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out_write(chunk)
    url = s3.url(backup_id, file.name)
    if size != file.size:
        raise IntegrityError(f"{url}: {size} bytes in the bucket, the manifest says {file.size}")
    if digest.hexdigest() != file.sha256:
        raise IntegrityError(f"{url}: sha256 mismatch (stored {digest.hexdigest()[:16]}..., "
                             f"manifest {file.sha256[:16]}...)")


@task(name="fetch-offsite", cache_policy=NO_CACHE, **RETRYABLE)
def fetch_backup(repo: BackupRepository, backup_id: str) -> str:
    """Copy a backup from the bucket into the local repository (checksums proven, manifest last),
    so that verify and restore can run on a machine that has only the bucket."""
    local, s3 = repo.local(), repo.s3()
    data = s3.read_manifest(backup_id)
    if data is None:
        raise RepositoryError(f"backup {backup_id} is not in {s3.describe()}")
    manifest = Manifest.from_bytes(data)
    if manifest.backup_id != backup_id:
        raise IntegrityError(f"{s3.url(backup_id, MANIFEST)} describes {manifest.backup_id}, not {backup_id}")
    if local.read_manifest(backup_id) is not None:
        return str(local.backup_dir(backup_id))
    local.ensure_writable()
    local.begin_backup(backup_id)
    try:
        for file in manifest.files:
            with local.write_file(backup_id, file.name) as out:
                fetch_checked(s3, backup_id, file, out.write)
        local.finish_backup(backup_id, data)
    except BaseException:
        local.abandon_backup(backup_id)
        raise
    get_run_logger().info("fetched %s from %s into %s", backup_id, s3.describe(), local.describe())
    return str(local.backup_dir(backup_id))


def collect_s3_garbage(s3: S3Storage, safety: timedelta, now: datetime | None = None) -> GarbageReport:
    """Abort unfinished multipart uploads and delete objects of backups that have no manifest,
    once all of them are older than `safety` (an upload may still be running)."""
    cutoff = (now or datetime.now(UTC)) - safety
    report = GarbageReport(source="s3", location=s3.describe())
    for backup_id, objects in sorted(s3.orphan_objects().items()):
        if all(o.last_modified < cutoff for o in objects):
            s3.delete_objects([o.name for o in objects])
            report.incomplete_backups.append(backup_id)
            report.deleted_objects += len(objects)
    for upload in s3.pending_uploads():
        if upload.initiated < cutoff:
            s3.abort_upload(upload)
            report.aborted_uploads += 1
    return report


def collect_local_garbage(local: LocalStorage, safety: timedelta) -> GarbageReport:
    """Remove backup folders without a manifest whose writer is gone (or that are too old)."""
    report = GarbageReport(source="local", location=local.describe())
    for backup_id in local.incomplete_backups(stale_after_s=safety.total_seconds()):
        local.abandon_backup(backup_id)
        report.incomplete_backups.append(backup_id)
    return report


@task(name="collect-garbage", cache_policy=NO_CACHE, **RETRYABLE)
def collect_garbage(repo: BackupRepository, source: str, safety_hours: float | None = None) -> GarbageReport:
    """Debris of interrupted backups and uploads, in the local repository or the bucket."""
    safety = timedelta(hours=repo.gc_safety_hours if safety_hours is None else safety_hours)
    if source == "s3":
        report = collect_s3_garbage(repo.s3(), safety)
    elif source == "local":
        report = collect_local_garbage(repo.local(), safety)
    else:
        raise RepositoryError(f"unknown repository source {source!r}: use 'local' or 's3'")
    get_run_logger().info("garbage collection: %s", report.summary())
    return report

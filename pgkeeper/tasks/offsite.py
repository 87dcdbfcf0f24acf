"""Offsite copies: upload a finished backup to S3 (manifest last), fetch one back, collect debris.

The copying and its proof live in the storage drivers (`Storage.copy_from`): every file is
shown to be the manifest's bytes before the manifest goes up, so the bucket only lists a
backup once every byte it describes is there.
"""

from __future__ import annotations

import time
from datetime import timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.errors import IntegrityError, RepositoryError
from pgkeeper.fmt import human_bytes
from pgkeeper.manifest import Manifest
from pgkeeper.storage.interface import Storage
from pgkeeper.tasks.policy import RETRYABLE


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
    aborted_uploads: int = 0

    def summary(self) -> str:
        return (f"{len(self.incomplete_backups)} incomplete backup(s), {self.aborted_uploads} unfinished "
                f"upload(s) or scratch area(s) removed from {self.location}")


def copy_backup(source: Storage, target: Storage, backup_id: str,
                abandon_on_failure: bool = False) -> tuple[Manifest, list[str]]:
    """Copy one complete backup, each file proven, manifest last; (manifest, how each was proven).
    The target never lists a copy that did not finish; its pieces are removed at once when
    `abandon_on_failure`, else by the next garbage collection once they are old."""
    data = source.read_manifest(backup_id)
    if data is None:
        raise RepositoryError(f"backup {backup_id} has no manifest in {source.describe()}")
    manifest = Manifest.from_bytes(data)
    if manifest.backup_id != backup_id:
        raise IntegrityError(f"the manifest of {source.location(backup_id)} describes {manifest.backup_id}")
    if target.read_manifest(backup_id) == data:  # a retry after the manifest arrived: done already
        return manifest, ["already uploaded, manifest identical"]
    target.ensure_writable()
    if backup_id not in target.claimed_ids():
        target.begin_backup(backup_id)
    try:
        checks = [target.copy_from(source, backup_id, file) for file in manifest.files]
        target.finish_backup(backup_id, data)  # last: from now on the target lists this backup
    except BaseException:
        if abandon_on_failure:
            target.abandon_backup(backup_id)
        raise
    return manifest, checks


@task(name="upload-offsite", cache_policy=NO_CACHE, **RETRYABLE)
def upload_backup(repo: BackupRepository, backup_id: str) -> UploadResult:
    """Copy a complete local backup to the bucket: data files, each proven, then the manifest."""
    logger = get_run_logger()
    local, s3 = repo.storage("local"), repo.storage("s3")
    started = time.monotonic()
    manifest, checks = copy_backup(local, s3, backup_id)
    seconds = time.monotonic() - started
    location = s3.location(backup_id) + "/"
    for check in checks:
        logger.info("%s: %s", location, check)
    logger.info("backup %s is in %s (%s in %.1f s)", backup_id, location, human_bytes(manifest.size), seconds)
    return UploadResult(backup_id=backup_id, location=location, files=len(manifest.files), bytes=manifest.size,
                        seconds=seconds, checks=checks)


@task(name="find-missing-offsite", cache_policy=NO_CACHE, **RETRYABLE)
def backups_missing_offsite(repo: BackupRepository) -> list[tuple[str, str]]:
    """(backup id, database) of complete local backups with no complete copy in the bucket,
    oldest first: an upload that never finished, or uploads switched on after they were made."""
    from pgkeeper.catalog import list_backups

    offsite = set(repo.storage("s3").list_backup_ids())  # one listing: ids whose manifest is in the bucket
    missing = [(m.backup_id, m.database) for m in list_backups(repo.storage("local")) if m.backup_id not in offsite]
    if repo.retention_tiers and missing:
        # One the bucket's tiers have expired (a longer local window) is not uploaded again.
        from pgkeeper.retention import plan_tiers
        from pgkeeper.tasks.retention import backup_records

        wanted = {d.backup_id for d in plan_tiers(backup_records(repo.storage("local"))[0], repo.tier_policy(), "s3")
                  if d.keep}
        missing = [x for x in missing if x[0] in wanted]
    return missing


@task(name="fetch-offsite", cache_policy=NO_CACHE, **RETRYABLE)
def fetch_backup(repo: BackupRepository, backup_id: str) -> str:
    """Copy a backup from the bucket into the local repository (checksums proven, manifest last),
    so that verify and restore can run on a machine that has only the bucket."""
    local, s3 = repo.storage("local"), repo.storage("s3")
    if s3.read_manifest(backup_id) is None:
        raise RepositoryError(f"backup {backup_id} is not in {s3.describe()}")
    if local.read_manifest(backup_id) is None:
        copy_backup(s3, local, backup_id, abandon_on_failure=True)
        get_run_logger().info("fetched %s from %s into %s", backup_id, s3.describe(), local.describe())
    return local.location(backup_id)


def collect_storage_garbage(storage: Storage, source: str, safety: timedelta) -> GarbageReport:
    """Backups without a manifest whose writer is gone (or that are older than `safety`), and
    what interrupted writes left outside backups (multipart uploads, scratch areas)."""
    report = GarbageReport(source=source, location=storage.describe())
    for backup_id in storage.incomplete_backups(stale_after_s=safety.total_seconds()):
        storage.abandon_backup(backup_id)
        report.incomplete_backups.append(backup_id)
    report.aborted_uploads = storage.clear_partial_writes(safety.total_seconds())
    return report


@task(name="collect-garbage", cache_policy=NO_CACHE, **RETRYABLE)
def collect_garbage(repo: BackupRepository, source: str, safety_hours: float | None = None) -> GarbageReport:
    """Debris of interrupted backups and uploads, in the local repository or the bucket."""
    safety = timedelta(hours=repo.gc_safety_hours if safety_hours is None else safety_hours)
    if source not in ("local", "s3"):
        raise RepositoryError(f"unknown repository source {source!r}: use 'local' or 's3'")
    report = collect_storage_garbage(repo.storage(source), source, safety)
    get_run_logger().info("garbage collection: %s", report.summary())
    return report

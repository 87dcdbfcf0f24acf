"""Claiming, finishing and abandoning a backup folder in the repository."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pgkeeper import __version__
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.claim import claim_backup_id
from pgkeeper.manifest import Manifest, Verification
from pgkeeper.names import backup_id_server
from pgkeeper.old_copy import recorded_as
from pgkeeper.serverinfo import ServerInfo
from pgkeeper.tasks.dump import DumpResult
from pgkeeper.tasks.verify import QuickCheck

if TYPE_CHECKING:
    from pgkeeper.early import EarlyBackup


@task(name="begin-backup", cache_policy=NO_CACHE)
def begin_backup(repo: BackupRepository, server_time: datetime | None = None, server: str | None = None,
                 early: EarlyBackup | None = None) -> str:
    """Claim a fresh backup id (pgkeeper.claim); with `early`, the one `pgkeeper backup` claimed
    for the stream it started before this run existed."""
    if early is not None:
        return early.backup_id
    return claim_backup_id(repo.storage(), server_time, server)


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(repo: BackupRepository, backup_id: str, info: ServerInfo, dumped: DumpResult,
                   check: QuickCheck, labels: list[str]) -> Manifest:
    """Write manifest.json last: from this moment on the backup exists and is listed. A restore's
    pre-restore copy is recorded as the database it was (pgkeeper/old_copy.py)."""
    database, properties, labels = recorded_as(info.database, dumped.properties, labels)
    manifest = Manifest(
        backup_id=backup_id, kind="logical", database=database,
        server_version=info.server_version, system_identifier=info.system_identifier,
        server=backup_id_server(backup_id), host=info.host, port=info.port,
        tool_version=f"pgkeeper {__version__}", started_at=dumped.started_at,
        finished_at=datetime.now(UTC), compression=repo.compression, encryption=dumped.file.encryption,
        size=dumped.file.size + dumped.globals_file.size,
        raw_size=(dumped.file.raw_size or 0) + (dumped.globals_file.raw_size or 0),
        database_size=info.database_size, files=[dumped.file, dumped.globals_file],
        tables=dumped.tables, objects=dumped.objects, labels=labels,
        database_properties=properties, roles=dumped.roles, dump_settings=dumped.dump_settings,
        verifications=[Verification(at=datetime.now(UTC), method="quick", ok=True, checks=check.checks)],
    )
    repo.storage().finish_backup(backup_id, manifest.to_bytes())
    get_run_logger().info("manifest written: backup %s is complete", backup_id)
    return manifest


@task(name="abandon-backup", cache_policy=NO_CACHE)
def abandon_backup(repo: BackupRepository, backup_id: str) -> None:
    """Remove a backup that did not complete, so nothing half-made stays behind."""
    repo.storage().abandon_backup(backup_id)
    get_run_logger().warning("backup %s did not complete; its files were removed", backup_id)

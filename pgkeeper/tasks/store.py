"""Claiming, finishing and abandoning a backup folder in the repository."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pgkeeper import __version__
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.clock import first_backup_time
from pgkeeper.errors import RepositoryError
from pgkeeper.manifest import Manifest, Verification
from pgkeeper.names import backup_id_server, new_backup_id
from pgkeeper.tasks.dump import DumpResult
from pgkeeper.tasks.preflight import ServerInfo
from pgkeeper.tasks.verify import QuickCheck


@task(name="begin-backup", cache_policy=NO_CACHE)
def begin_backup(repo: BackupRepository, server_time: datetime | None = None, server: str | None = None) -> str:
    """Claim a fresh backup id naming `server` (names.server_key), newer than every id in the
    repository and from a clock that agrees with the database server's (pgkeeper.clock); two
    backups started in the same second get the next second."""
    storage = repo.storage()
    storage.ensure_writable()
    existing = storage.claimed_ids()  # incomplete ones count too
    now = first_backup_time(existing, datetime.now(UTC), server_time)
    for attempt in range(30):
        backup_id = new_backup_id(now + timedelta(seconds=attempt), server)
        try:
            storage.begin_backup(backup_id)
            return backup_id
        except RepositoryError:
            if backup_id not in storage.claimed_ids():
                raise
    raise RepositoryError(f"could not claim a new backup id in {storage.describe()}")


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(repo: BackupRepository, backup_id: str, info: ServerInfo, dumped: DumpResult,
                   check: QuickCheck, labels: list[str]) -> Manifest:
    """Write manifest.json last: from this moment on the backup exists and is listed."""
    manifest = Manifest(
        backup_id=backup_id, kind="logical", database=info.database,
        server_version=info.server_version, system_identifier=info.system_identifier,
        server=backup_id_server(backup_id), host=info.host, port=info.port,
        tool_version=f"pgkeeper {__version__}", started_at=dumped.started_at,
        finished_at=datetime.now(UTC), compression=repo.compression, encryption=dumped.file.encryption,
        size=dumped.file.size + dumped.globals_file.size,
        raw_size=(dumped.file.raw_size or 0) + (dumped.globals_file.raw_size or 0),
        database_size=info.database_size, files=[dumped.file, dumped.globals_file],
        tables=dumped.tables, objects=dumped.objects, labels=labels,
        database_properties=dumped.properties, roles=dumped.roles, dump_settings=dumped.dump_settings,
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

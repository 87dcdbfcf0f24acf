"""The base-backup flow: preflight → pg_basebackup (streamed into the repository, every file
checked against backup_manifest on the way) → WAL archived → verification (stored bytes read
back, WAL parsed) → manifest → offsite copy → report. The physical half of point-in-time
recovery (the other half is WAL). A cluster with tablespaces is staged and checked by
pg_verifybackup on an unpacked copy instead (tasks/basebackup.py)."""

from __future__ import annotations

from pgkeeper.config import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK, load_connection, load_repository
from pgkeeper.early_base import adopt as adopt_early
from pgkeeper.flows.quick import flow
from pgkeeper.manifest import Manifest
from pgkeeper.names import server_key
from pgkeeper.runinfo import name_from_parameters, untagged_tasks
from pgkeeper.sentry import report_failure
from pgkeeper.tasks.basebackup import (
    check_wal_archived,
    physical_preflight,
    report_base_backup,
    stream_base_backup,
    take_base_backup,
    verify_base_backup,
    wal_settings,
    write_physical_manifest,
)
from pgkeeper.tasks.store import abandon_backup, begin_backup


@flow(name="base-backup", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],  # Sentry
      flow_run_name=name_from_parameters("base-backup", "database", "connection_block"))
def base_backup(
    database: str | None = None,
    connection_block: str = DEFAULT_CONNECTION_BLOCK,
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    backup_dir: str | None = None,
    wal_config: str | None = None,
    verify: bool = True,
    labels: list[str] | None = None,
) -> Manifest:
    """Take a physical base backup of the whole cluster into the repository.

    `wal_config` names the file archive_command/restore_command read; it is refreshed from the
    repository block so that wal-push follows changes to the block.
    """
    with untagged_tasks():  # no concurrency-slot round trips per step (runinfo.untagged_tasks)
        conn = load_connection(connection_block, database=database, host=host, port=port, user=user)
        repo = load_repository(repository_block, path=backup_dir)

        # What `pgkeeper base-backup` began before this run existed (WAL config, preflight, id,
        # stream), when it chose as this run does; the steps below then adopt it.
        early = adopt_early(conn, repo, wal_config)
        walcfg = wal_settings(repo, wal_config, early)
        info = physical_preflight(conn, repo, early)
        backup_id = begin_backup(repo, info.server_time, server_key(conn.host, conn.port, info.system_identifier),
                                 early)
        try:
            if info.tablespaces:  # -D - takes no tablespaces: staged
                files = take_base_backup(conn, repo, backup_id)
            else:
                files = stream_base_backup(conn, repo, backup_id, early)
            segments = check_wal_archived(walcfg, files.start_lsn, files.stop_lsn, files.timeline,
                                          info.wal_segment_size)
            checks = verify_base_backup(repo, backup_id, files, walcfg, segments) if verify else {}
            manifest = write_physical_manifest(repo, backup_id, conn.database, info, files, checks, labels or [],
                                               (conn.host, conn.port))
        except BaseException:
            if early is not None:
                early.stop()  # no stream may write into a folder being removed
            abandon_backup(repo, backup_id)
            raise
        if repo.has_offsite():
            from pgkeeper.tasks.offsite import upload_backup

            upload_backup(repo, backup_id)
        report_base_backup(manifest, repo.storage().describe())
        return manifest

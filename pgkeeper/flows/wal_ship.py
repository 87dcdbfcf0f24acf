"""The wal-ship flow, scheduled every few minutes: spool → S3, then is the archiver healthy?"""

from __future__ import annotations

from prefect import flow

from pgkeeper.config import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK, load_connection, load_repository
from pgkeeper.events import wal_shipped
from pgkeeper.runinfo import name_from_parameters
from pgkeeper.sentry import report_failure
from pgkeeper.tasks.basebackup import wal_settings
from pgkeeper.tasks.catalog_artifact import publish_catalog
from pgkeeper.tasks.wal_continuity import check_continuity
from pgkeeper.tasks.wal_ship import ArchiverStatus, check_archiver, read_archiver, report_archive, ship_spool


@flow(name="wal-ship", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],
      flow_run_name=name_from_parameters("wal-ship", "database", "connection_block"))
def wal_ship(
    connection_block: str = DEFAULT_CONNECTION_BLOCK,
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    database: str | None = None,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    backup_dir: str | None = None,
    wal_config: str | None = None,
    keep_local_seconds: float | None = None,
    max_lag_seconds: float = 900,
) -> ArchiverStatus:
    """Move spooled WAL to the offsite bucket and fail (so the failure mail fires) when
    PostgreSQL cannot archive, archiving lags more than `max_lag_seconds`, or the archive has
    a gap after a kept base backup's start (the continuity check)."""
    conn = load_connection(connection_block, database=database, host=host, port=port, user=user)
    repo = load_repository(repository_block, path=backup_dir)

    walcfg = wal_settings(repo, wal_config)
    shipped = ship_spool(walcfg, keep_local_seconds)
    status = read_archiver(conn)
    report_archive(status, shipped)
    if shipped.uploaded:  # the absence alert waits for this event; an idle server ships nothing
        wal_shipped(conn.database, status, shipped)
    check_archiver(status, max_lag_seconds, conn.database)
    publish_catalog(repo)  # the UI's keyed catalog artifact, before a failed check ends the run
    check_continuity(repo, walcfg)  # a gap after a kept base backup fails the run (and mails)
    return status

"""Preflight: is the server there, how big is the job, and does it fit on the disk?"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pgkeeper.alerts import warn
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.fmt import human_bytes
from pgkeeper.serverinfo import FIRST_BACKUP_RATIO as FIRST_BACKUP_RATIO
from pgkeeper.serverinfo import ServerInfo, server_facts
from pgkeeper.serverinfo import size_estimate as size_estimate
from pgkeeper.tasks.policy import RETRYABLE

if TYPE_CHECKING:
    from pgkeeper.early import EarlyBackup


@task(name="preflight", cache_policy=NO_CACHE, **RETRYABLE)
def preflight(conn: PostgresConnection, repo: BackupRepository, early: EarlyBackup | None = None) -> ServerInfo:
    """Server reachable, its version and size; repository writable with room to spare.

    With `early`, what `pgkeeper backup` found before this run existed (the same checks, made
    before its stream started) is the answer, and its warnings are raised here."""
    if early is not None:
        info = early.server_info()
        for kind, message, details in early.alerts:
            warn(kind, message, **details)
    else:
        info = server_facts(conn, repo, warn)
    get_run_logger().info("server %s, PostgreSQL %s, database %s is %s; repository %s has %s free",
                          conn.describe(), info.server_version, conn.database, human_bytes(info.database_size),
                          repo.storage().describe(), human_bytes(info.free_bytes))
    return info

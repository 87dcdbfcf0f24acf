"""Dump: pg_dump -Fc -Z0 streamed through the compressor, hashed on the way, written once.

The data path itself is pgkeeper.dumpstream (no Prefect); this task gives it a progress artifact
and log lines, and adopts the stream `pgkeeper backup` started before Prefect was imported.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.dumpstream import DumpResult, dump_in_snapshot
from pgkeeper.fmt import human_bytes
from pgkeeper.tasks.policy import RETRYABLE

if TYPE_CHECKING:
    from pgkeeper.early import EarlyBackup


def _artifact_key(database: str) -> str:
    return "backup-progress-" + re.sub(r"[^a-z0-9-]+", "-", database.lower()).strip("-")


@task(name="dump", cache_policy=NO_CACHE, **RETRYABLE)
def dump_database(conn: PostgresConnection, repo: BackupRepository, backup_id: str,
                  estimated_raw_bytes: int, early: EarlyBackup | None = None) -> DumpResult:
    """Dump the database in an exported snapshot, counting its rows in that same snapshot.

    With `early` (the stream `pgkeeper backup` started before this run existed, into this very
    backup), its result is awaited instead; a retry after it failed dumps anew (an adopted stream
    cannot be restarted)."""
    logger = get_run_logger()
    progress_id = create_progress_artifact(0.0, key=_artifact_key(conn.database),
                                           description=f"pg_dump of {conn.database} ({backup_id})")

    def report(raw: int) -> None:
        pct = min(99.0, 100.0 * raw / max(estimated_raw_bytes, 1))
        update_progress_artifact(progress_id, pct)
        logger.info("dumped %s (about %.0f%%)", human_bytes(raw), pct)

    if early is not None and early.take_stream(backup_id):
        logger.info("pg_dump started before the run (pgkeeper backup's early start): waiting for it")
        dumped = early.dump_result(report)
    else:
        dumped = dump_in_snapshot(conn, repo, backup_id, report)
    update_progress_artifact(progress_id, 100.0)
    logger.info("stored %s as %s (%s, sha256 %s)", conn.database, dumped.file.name,
                human_bytes(dumped.file.size), dumped.file.sha256[:16])
    return dumped

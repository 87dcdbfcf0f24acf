"""WAL shipping: spool → S3 (checksums proven by S3), and the archiver's health.

wal-push only reaches the local spool (PostgreSQL must never wait on the network); these
tasks move the spool offsite and read pg_stat_archiver, so a failing or lagging archive
fails a scheduled run, which is what sends the mail.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper.alerts import warn
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.errors import ArchiveFailing
from pgkeeper.fmt import human_bytes, human_seconds
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.wal import ahead, identity
from pgkeeper.wal.config import WalConfig
from pgkeeper.wal.naming import is_history
from pgkeeper.wal.spool import LocalWalStore, WalConflict

STALE_TEMP_SECONDS = 3600.0


class ShipResult(BaseModel):
    uploaded: int = 0
    already_there: int = 0
    removed_from_spool: int = 0
    left_in_spool: int = 0
    bytes: int = 0
    stale_temp_removed: int = 0  # leftovers of killed pushes, and push-ahead markers never used
    destination: str = ""


class ArchiverStatus(BaseModel):
    server: str
    archive_mode: str
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    pending_segments: int
    oldest_pending_since: datetime | None
    checked_at: datetime

    @property
    def failing(self) -> bool:
        """The most recent attempt failed (a later success clears it, as in PostgreSQL)."""
        return bool(self.last_failed_time and (self.last_archived_time is None
                                               or self.last_failed_time > self.last_archived_time))

    @property
    def lag_seconds(self) -> float:
        """How long the oldest segment has been waiting to be archived (0 when none waits)."""
        if not self.pending_segments or self.oldest_pending_since is None:
            return 0.0
        return max((self.checked_at - self.oldest_pending_since).total_seconds(), 0.0)


@task(name="ship-wal", cache_policy=NO_CACHE, **RETRYABLE)
def ship_spool(walcfg: WalConfig, keep_local_seconds: float | None = None) -> ShipResult:
    """Upload every spooled WAL object not yet in S3; drop it from the spool once it is there
    and older than the local keep window. A differing copy already in S3 is never overwritten."""
    from pgkeeper.wal.s3 import S3WalStore

    logger = get_run_logger()
    if walcfg.s3 is None:
        return ShipResult(destination="(no S3 target: the spool is the archive)")
    keep = walcfg.keep_local_seconds if keep_local_seconds is None else keep_local_seconds
    local, remote = LocalWalStore(walcfg.spool), S3WalStore(walcfg.s3)
    result = ShipResult(destination=remote.describe())
    archive_id = identity.load(walcfg.spool)
    if archive_id is not None:  # the bucket's prefix must belong to the same cluster, or nothing moves
        logger.info("%s", identity.check_remote(archive_id, remote))
    in_s3: dict[str, set[str]] = {}
    for name, sha, _rel in remote.objects():  # one listing for the whole run
        in_s3.setdefault(name, set()).add(sha)
    conflicts = []
    now = time.time()
    for obj in local.objects():
        there = in_s3.get(obj.name, set())
        if obj.sha256 in there:
            result.already_there += 1
        elif there:
            conflicts.append(obj.name)
            continue
        else:
            remote.put_file(obj.key, str(obj.path), obj.sha256)
            result.uploaded += 1
            result.bytes += obj.path.stat().st_size
        # History files stay: they are tiny, and `pgkeeper list` reads them to follow timelines offline.
        if now - obj.path.stat().st_mtime >= keep and not is_history(obj.name):
            local.record_shipped(obj)  # so wal-push can still refuse a differing duplicate
            local.remove(obj)
            result.removed_from_spool += 1
        else:
            result.left_in_spool += 1
    for tmp in local.stale_temp_files(STALE_TEMP_SECONDS):
        tmp.unlink(missing_ok=True)
        result.stale_temp_removed += 1
    # A push-ahead marker is normally used within seconds; an old one means archiving was
    # reconfigured. Dropping it is always safe: that file's call then does the full push.
    for marker in ahead.stale_markers(str(local.root), STALE_TEMP_SECONDS):
        try:
            os.unlink(marker)
        except FileNotFoundError:
            continue
        result.stale_temp_removed += 1
    logger.info("shipped %d WAL file(s) (%s) to %s; %d already there; %d removed from the spool, %d kept",
                result.uploaded, human_bytes(result.bytes), result.destination, result.already_there,
                result.removed_from_spool, result.left_in_spool)
    if conflicts:
        raise WalConflict(f"{conflicts[0]} is in {remote.describe()} with different content than in the spool "
                          f"({len(conflicts)} file(s)); neither copy was changed")
    return result


@task(name="read-archiver", cache_policy=NO_CACHE, **RETRYABLE)
def read_archiver(conn: PostgresConnection) -> ArchiverStatus:
    """pg_stat_archiver, plus the segments still waiting (.ready) and since when."""
    with conn.connect() as c:
        row = c.execute(
            "SELECT current_setting('archive_mode'), archived_count, last_archived_wal, last_archived_time, "
            "failed_count, last_failed_wal, last_failed_time, now() FROM pg_stat_archiver").fetchone()
        pending, oldest = c.execute(
            "SELECT count(*), min(modification) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
        ).fetchone()  # type: ignore[misc]
    mode, archived, last_wal, last_time, failed, failed_wal, failed_time, now = row  # type: ignore[misc]
    return ArchiverStatus(server=conn.describe(), archive_mode=mode, archived_count=archived,
                          last_archived_wal=last_wal, last_archived_time=last_time, failed_count=failed,
                          last_failed_wal=failed_wal, last_failed_time=failed_time, pending_segments=int(pending),
                          oldest_pending_since=oldest, checked_at=now)


def archive_markdown(status: ArchiverStatus, shipped: ShipResult) -> str:
    def when(t: datetime | None) -> str:
        return t.astimezone(UTC).isoformat(sep=" ", timespec="seconds") if t else "-"

    health = "FAILING" if status.failing else ("lagging" if status.lag_seconds else "ok")
    return "\n".join([
        f"# WAL archive of {status.server}: {health}", "",
        f"- **archive_mode**: {status.archive_mode}",
        f"- **Archived**: {status.archived_count} segments, last `{status.last_archived_wal or '-'}` at "
        f"{when(status.last_archived_time)}",
        f"- **Failed**: {status.failed_count} attempts, last `{status.last_failed_wal or '-'}` at "
        f"{when(status.last_failed_time)}",
        f"- **Waiting**: {status.pending_segments} segment(s), archive lag {human_seconds(status.lag_seconds)}",
        f"- **Shipped**: {shipped.uploaded} file(s), {human_bytes(shipped.bytes)} to {shipped.destination}",
        f"- **Spool**: {shipped.removed_from_spool} removed, {shipped.left_in_spool} kept",
    ])


@task(name="report-archive")
def report_archive(status: ArchiverStatus, shipped: ShipResult) -> float:
    """The archive-lag artifact; returns the lag in seconds."""
    from prefect.artifacts import create_markdown_artifact

    from pgkeeper.tasks.report import artifact_key

    create_markdown_artifact(archive_markdown(status, shipped), key=artifact_key("wal-archive", status.server),
                             description=f"WAL archive health of {status.server}")
    return status.lag_seconds


@task(name="check-archiver", cache_policy=NO_CACHE)
def check_archiver(status: ArchiverStatus, max_lag_seconds: float, database: str | None = None) -> None:
    """Fail the run when archiving fails or lags past the limit; warn at half of it."""
    if status.archive_mode == "off":
        raise ArchiveFailing(f"archive_mode is off on {status.server}: no WAL is archived, point-in-time "
                             "recovery is impossible (run `pgkeeper wal-setup --apply` and restart)")
    if status.failing:
        raise ArchiveFailing(
            f"WAL archiving is failing on {status.server}: PostgreSQL could not archive {status.last_failed_wal} "
            f"({status.failed_count} failed attempts, last at {status.last_failed_time}; "
            f"{status.pending_segments} segment(s) waiting); check archive_command and the spool")
    lag = status.lag_seconds
    if lag > max_lag_seconds:
        raise ArchiveFailing(f"WAL archiving on {status.server} is {human_seconds(lag)} behind "
                             f"({status.pending_segments} segment(s) waiting, limit {human_seconds(max_lag_seconds)})")
    if lag > max_lag_seconds / 2:
        warn("archive-lag", f"WAL archiving on {status.server} is {human_seconds(lag)} behind "
             f"({status.pending_segments} segment(s) waiting)", database=database, lag_seconds=lag)


@task(name="expire-wal", cache_policy=NO_CACHE, **RETRYABLE)
def expire_archived_wal(repo: Any, dry_run: bool = False) -> str:
    """After retention: drop WAL that none of the remaining base backups (local or S3) needs."""
    from pgkeeper.catalog import list_backups
    from pgkeeper.wal.retention import expire_wal

    kept = [m for m in list_backups(repo.storage()) if m.kind == "physical"]
    if repo.offsite is not None:
        kept += [m for m in list_backups(repo.storage("s3")) if m.kind == "physical"]
    pitr_from = None
    if repo.retention_tiers and kept:
        from datetime import timedelta

        # Point-in-time recovery over the daily window; older kept tiers keep their own WAL.
        window = max(repo.daily_local_days, repo.daily_s3_days if repo.offsite is not None else 0)
        pitr_from = max(m.finished_at for m in kept) - timedelta(days=window)
    result = expire_wal(repo, kept, dry_run, pitr_from)
    get_run_logger().info("WAL retention: %s", result.summary())
    return result.summary()

"""The archive continuity check as a task: every kept base backup's WAL, from its start to the
newest archived segment, across timelines (pgkeeper.wal.continuity). A gap fails the run."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups
from pgkeeper.errors import IntegrityError
from pgkeeper.manifest import Manifest
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.wal import identity
from pgkeeper.wal.config import WalConfig
from pgkeeper.wal.continuity import ContinuityReport, check
from pgkeeper.wal.naming import DEFAULT_SEGMENT_SIZE
from pgkeeper.wal.view import add_s3, local_view


class WalGap(IntegrityError):
    """A segment that a kept base backup needs is missing from the archive."""


def kept_base_backups(repo: BackupRepository, system_identifier: str | None = None) -> list[Manifest]:
    """Physical backups in the repository and its bucket (once each), of the archive's cluster."""
    found = {m.backup_id: m for m in list_backups(repo.storage(), kind="physical")}
    if repo.offsite is not None:
        for m in list_backups(repo.storage("s3"), kind="physical"):
            found.setdefault(m.backup_id, m)
    return [m for _, m in sorted(found.items())
            if system_identifier is None or m.system_identifier in (None, system_identifier)]


def archive_continuity(walcfg: WalConfig, manifests: list[Manifest], with_s3: bool = True) -> ContinuityReport:
    view = local_view(walcfg.spool)
    if with_s3 and walcfg.s3 is not None:
        from pgkeeper.wal.s3 import S3WalStore

        add_s3(view, S3WalStore(walcfg.s3))
    sizes = {m.wal_segment_size for m in manifests if m.wal_segment_size}
    size = sizes.pop() if len(sizes) == 1 else DEFAULT_SEGMENT_SIZE
    backups = [(m.backup_id, m.start_lsn, m.timeline or 1, m.finished_at) for m in manifests if m.start_lsn]
    return check(backups, view.archived, view.histories, size)


def _t(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else "-"


def continuity_markdown(report: ContinuityReport, where: str) -> str:
    lines = [f"# WAL continuity of {where}: {'ok' if report.ok else 'GAP'}", "",
             f"Newest archived segment: `{report.newest_segment or '-'}`", "",
             "| Base backup | Start | Timeline | Recoverable from (UTC) | to (UTC, archive time) | Gap |",
             "|---|---|---|---|---|---|"]
    for b in report.backups:
        gap = f"`{b.missing[0]}` ({b.missing_count} missing)" if b.missing else "none"
        for w in b.windows:
            lines.append(f"| {b.backup_id} | `{b.start_segment}` | {w.timeline} | {_t(w.earliest)} | "
                         f"{_t(w.latest)} | {gap} |")
    if not report.backups:
        lines.append("| (no base backup) | | | | | |")
    lines += [f"- {f}" for f in report.forks]
    return "\n".join(lines)


@task(name="check-wal-continuity", cache_policy=NO_CACHE, **RETRYABLE)
def check_continuity(repo: BackupRepository, walcfg: WalConfig) -> ContinuityReport:
    """Walk the archive from each kept base backup's start; an artifact shows each one's
    recoverability window; a gap raises WalGap naming the first missing segment."""
    from prefect.artifacts import create_markdown_artifact

    from pgkeeper.tasks.report import artifact_key

    archive_id = identity.load(walcfg.spool)
    manifests = kept_base_backups(repo, archive_id.system_identifier if archive_id else None)
    report = archive_continuity(walcfg, manifests)
    where = walcfg.s3.describe_wal() if walcfg.s3 else walcfg.spool
    create_markdown_artifact(continuity_markdown(report, where), key=artifact_key("wal-continuity"),
                             description=f"WAL continuity and recoverability windows of {where}")
    logger = get_run_logger()
    for b in report.backups:
        logger.info("%s", b.describe())
    for f in report.forks:
        logger.warning("%s", f)
    broken = [b for b in report.backups if not b.ok]
    if broken:
        b = broken[0]
        raise WalGap(f"WAL segment {b.missing[0]} is missing from {where}: base backup {b.backup_id} can be "
                     f"recovered only up to {b.recoverable_to or 'its own end'}, not past the gap "
                     f"({sum(x.missing_count for x in broken)} missing segment(s) across "
                     f"{len(broken)} backup(s))")
    return report

"""The retention flow: apply the keep policy to the local repository or the bucket, then collect
the debris of interrupted backups and uploads. Also the steps the backup flow runs after a
backup: offsite upload → retention → garbage collection."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from pgkeeper.alerts import warn
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.config import DEFAULT_REPOSITORY_BLOCK, load_repository
from pgkeeper.errors import PgkeeperError
from pgkeeper.runinfo import name_from_parameters
from pgkeeper.sentry import report_failure
from pgkeeper.tasks.catalog_artifact import publish_catalog
from pgkeeper.tasks.offsite import backups_missing_offsite, collect_garbage, upload_backup
from pgkeeper.tasks.retention import RetentionReport, apply_retention
from pgkeeper.tasks.wal_ship import expire_archived_wal


def after_backup(repo: BackupRepository, backup_id: str) -> list[str]:
    """Upload (when offsite is configured), then retention and garbage collection on every
    source; one line per step for the caller. Runs inside the backup flow."""
    lines = []
    sources = ["local"]
    if repo.has_offsite():
        uploaded = upload_backup(repo, backup_id)
        lines.append(f"uploaded to {uploaded.location}, checksum verified")
        sources.append("s3")
    reports = [apply_retention(repo, "local", protect=[backup_id])]
    if repo.has_offsite():
        # After local retention, so only backups that are kept get a late offsite copy.
        caught_up = upload_missing(repo)
        if caught_up:
            lines.append(f"uploaded {len(caught_up)} older backup(s) that were not offsite: {', '.join(caught_up)}")
        reports.append(apply_retention(repo, "s3", protect=[backup_id]))
    if len(reports) == 1:
        lines.append(f"retention: {reports[0].summary()}")
    else:
        lines.append("retention: " + ", ".join(f"{r.summary()} ({r.source})" for r in reports))
    for source in sources:
        collect_garbage(repo, source)
    return lines


def upload_missing(repo: BackupRepository) -> list[str]:
    """Give every kept local backup its offsite copy. One that cannot be uploaded (say, a local
    file no longer matches its manifest) is a warning: today's backup is still good and up."""
    done = []
    for backup_id, database in backups_missing_offsite(repo):
        try:
            upload_backup(repo, backup_id)
        except PgkeeperError as exc:
            warn("offsite-missing", f"backup {backup_id} has no offsite copy: {exc}", database=database)
            continue
        done.append(backup_id)
    return done


@flow(name="retention", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],  # Sentry
      flow_run_name=name_from_parameters("retention", "backup_dir", "repository_block"))
def retention(
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    backup_dir: str | None = None,
    sources: list[Literal["local", "s3"]] | None = None,
    dry_run: bool = False,
    gc_safety_hours: float | None = None,
) -> list[RetentionReport]:
    """Keep what the policy says (never the newest verified backup, never fewer than the
    minimum, nothing at all while the newest backup failed), remove the rest, then collect
    garbage. `sources` defaults to the local repository, plus the bucket when uploads are on.
    A dry run reports the same decisions and removes nothing."""
    repo = load_repository(repository_block, path=backup_dir)
    sources = sources or (["local", "s3"] if repo.has_offsite() else ["local"])
    reports = []
    for source in sources:
        reports.append(apply_retention(repo, source, dry_run))
        if not dry_run:
            collect_garbage(repo, source, gc_safety_hours)
    wal = expire_archived_wal(repo, dry_run)  # WAL no remaining base backup needs (pgkeeper.wal.retention)
    publish_catalog(repo)  # the UI's keyed catalog artifact
    return [r.model_copy(update={"wal": wal}) for r in reports]

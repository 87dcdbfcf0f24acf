"""What the backup flow does after each backup: offsite upload → retention → garbage collection.

Its own module, without a flow: a backup does not define (nor pay the import of) the retention
flow and its WAL steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgkeeper.alerts import warn
from pgkeeper.errors import PgkeeperError
from pgkeeper.tasks.offsite import backups_missing_offsite, collect_garbage, upload_backup
from pgkeeper.tasks.retention import apply_retention

if TYPE_CHECKING:
    from pgkeeper.blocks.repository import BackupRepository


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

"""The retention flow: apply the keep policy to the local repository or the bucket, then collect
the debris of interrupted backups and uploads. (The same steps after each backup, with the
offsite upload first: pgkeeper.flows.after_backup.)"""

from __future__ import annotations

from typing import Literal

from prefect import flow

from pgkeeper.config import DEFAULT_REPOSITORY_BLOCK, load_repository
from pgkeeper.runinfo import name_from_parameters
from pgkeeper.sentry import report_failure
from pgkeeper.tasks.catalog_artifact import publish_catalog
from pgkeeper.tasks.offsite import collect_garbage
from pgkeeper.tasks.retention import RetentionReport, apply_retention
from pgkeeper.tasks.wal_ship import expire_archived_wal


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

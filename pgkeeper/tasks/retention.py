"""Retention: read the catalog of one source (local or S3), ask the policy, remove, report."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups
from pgkeeper.manifest import Manifest
from pgkeeper.names import backup_id_time
from pgkeeper.retention import BackupRecord, Decision, plan
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tasks.report import artifact_key


class RetentionReport(BaseModel):
    source: str
    location: str
    dry_run: bool
    policy: str
    kept: list[str]
    removed: list[str]
    reasons: dict[str, str]  # backup id -> why it was kept or removed
    wal: str = ""  # what WAL retention did: set by the retention flow, which expires WAL once after all sources

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return f"kept {len(self.kept)}, {verb} {len(self.removed)}"


def backup_records(storage) -> tuple[list[BackupRecord], dict[str, Manifest]]:  # noqa: ANN001
    """What the policy needs to know of each backup, complete or not, from the storage alone."""
    manifests = {m.backup_id: m for m in list_backups(storage)}
    records = [BackupRecord(backup_id=m.backup_id, taken_at=backup_id_time(m.backup_id), complete=True,
                            status=m.status, group=f"{m.kind}/{m.database}", labels=tuple(m.labels))
               for m in manifests.values()]
    # Backups without a readable manifest: crashed, interrupted, or still being written.
    incomplete = set(storage.list_backup_ids()) - set(manifests)
    incomplete |= set(storage.incomplete_backups(stale_after_s=0))
    records += [BackupRecord(backup_id=i, taken_at=backup_id_time(i), complete=False) for i in sorted(incomplete)]
    return records, manifests


def _table(decisions: list[Decision], manifests: dict[str, Manifest], dry_run: bool) -> list[dict[str, str]]:
    rows = []
    for d in sorted(decisions, key=lambda d: d.backup_id, reverse=True):
        m = manifests[d.backup_id]
        action = "keep" if d.keep else ("would remove" if dry_run else "removed")
        rows.append({"backup": d.backup_id, "database": m.database, "kind": m.kind, "status": m.status,
                     "labels": ",".join(m.labels) or "-", "decision": action, "reason": d.reason})
    return rows


@task(name="retention", cache_policy=NO_CACHE, **RETRYABLE)
def apply_retention(repo: BackupRepository, source: str = "local", dry_run: bool = False,
                    protect: list[str] | None = None) -> RetentionReport:
    """Apply the repository's retention policy to one source; a table artifact shows every decision.
    `protect`: backups this run made, never removed by it (whatever their id says)."""
    logger = get_run_logger()
    storage = repo.storage(source)
    policy = repo.retention_policy()
    records, manifests = backup_records(storage)
    decisions = plan(records, policy, now=datetime.now(UTC), protect=protect or [])
    removed = [d for d in decisions if not d.keep]
    for d in sorted(removed, key=lambda d: d.backup_id):
        logger.info("%s %s: %s", "would remove" if dry_run else "removing", d.backup_id, d.reason)
        if not dry_run:
            storage.delete_backup(d.backup_id)
    report = RetentionReport(
        source=source, location=storage.describe(), dry_run=dry_run, policy=policy.describe(),
        kept=sorted(d.backup_id for d in decisions if d.keep), removed=sorted(d.backup_id for d in removed),
        reasons={d.backup_id: d.reason for d in decisions})
    create_table_artifact(
        table=_table(decisions, manifests, dry_run), key=artifact_key("retention", source),
        description=f"Retention of {storage.describe()} ({policy.describe()}): {report.summary()}"
                    f"{' (dry run)' if dry_run else ''}")
    logger.info("retention of %s: %s", storage.describe(), report.summary())
    return report

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
from pgkeeper.retention import BackupRecord, Decision, class_rank, plan, plan_tiers
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
    tiers: dict[str, str] = {}  # tiered policies: backup id -> tier (kept and removed alike)
    moved: dict[str, str] = {}  # backup id -> the storage class its objects moved to

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        moved = f", {'would move' if self.dry_run else 'moved'} {len(self.moved)}" if self.moved else ""
        return f"kept {len(self.kept)}, {verb} {len(self.removed)}{moved}"


def backup_records(storage) -> tuple[list[BackupRecord], dict[str, Manifest]]:  # noqa: ANN001
    """What the policy needs to know of each backup, complete or not, from the storage alone."""
    manifests = {m.backup_id: m for m in list_backups(storage)}
    records = [BackupRecord(backup_id=m.backup_id, taken_at=backup_id_time(m.backup_id), complete=True,
                            status=m.status, group=m.retention_group, labels=tuple(m.labels))
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
    report, decisions, manifests = retain(repo, storage, source, dry_run, protect or [], datetime.now(UTC),
                                          log=logger.info)
    create_table_artifact(
        table=_table(decisions, manifests, dry_run), key=artifact_key("retention", source),
        description=f"Retention of {storage.describe()} ({report.policy}): {report.summary()}"
                    f"{' (dry run)' if dry_run else ''}")
    logger.info("retention of %s: %s", storage.describe(), report.summary())
    return report


def retain(repo: BackupRepository, storage, source: str, dry_run: bool, protect: list[str],  # noqa: ANN001
           now: datetime, log=lambda *a: None) -> tuple[RetentionReport, list[Decision], dict[str, Manifest]]:  # noqa: ANN001
    """The retention of one source without Prefect (the task adds logs and the artifact): decide,
    remove, move the kept ones to their tier's class, record what was done."""
    records, manifests = backup_records(storage)
    if repo.retention_tiers:
        policy = repo.tier_policy()
        decisions = plan_tiers(records, policy, source, now=now, protect=protect, offsite=repo.has_offsite())
        if source == "local" and repo.has_offsite():
            decisions = _keep_until_offsite(repo, records, decisions, now)
    else:
        policy = repo.retention_policy()
        decisions = plan(records, policy, now=now, protect=protect)
    removed = [d for d in decisions if not d.keep]
    for d in sorted(removed, key=lambda d: d.backup_id):
        log("%s %s: %s", "would remove" if dry_run else "removing", d.backup_id, d.reason)
        if not dry_run:
            storage.delete_backup(d.backup_id)
    moved = move_to_tier_classes(repo, storage, decisions, manifests, dry_run) \
        if repo.retention_tiers and source == "s3" else {}
    for backup_id, cls in moved.items():
        log("%s %s to %s", "would move" if dry_run else "moved", backup_id, cls)
    report = RetentionReport(
        source=source, location=storage.describe(), dry_run=dry_run, policy=policy.describe(),
        kept=sorted(d.backup_id for d in decisions if d.keep), removed=sorted(d.backup_id for d in removed),
        reasons={d.backup_id: d.reason for d in decisions}, moved=moved,
        tiers={d.backup_id: d.tier for d in decisions if d.tier})
    if not dry_run and (report.removed or moved):
        record_retention(storage, report, now)
    return report, decisions, manifests


def _keep_until_offsite(repo: BackupRepository, records: list[BackupRecord], decisions: list[Decision],
                        now: datetime) -> list[Decision]:
    """A local backup the bucket's tiers want but that is not offsite yet stays local: the local
    expiry counts on the bucket's longer windows. (One the bucket has expired may go.)"""
    wanted = {d.backup_id for d in plan_tiers(records, repo.tier_policy(), "s3", now=now) if d.keep}
    waiting = wanted - set(repo.storage("s3").list_backup_ids())
    return [Decision(d.backup_id, d.group, True, "not offsite yet: kept until it is uploaded", d.tier)
            if not d.keep and d.backup_id in waiting else d for d in decisions]


def move_to_tier_classes(repo: BackupRepository, storage, decisions: list[Decision],  # noqa: ANN001
                         manifests: dict[str, Manifest], dry_run: bool) -> dict[str, str]:
    """Server-side copy of each kept backup's data files into its tier's storage class (only ever
    towards colder classes: an archived object cannot be copied without a restore request), then
    its manifest, still in a standard class, records the tier and class. backup id -> new class."""
    policy = repo.tier_policy()
    wanted = {t.name: t.s3_class for t in policy.tiers()}
    default = (repo.s3_storage_class or "STANDARD").upper()
    moved: dict[str, str] = {}
    for d in decisions:
        if not d.keep or not d.tier or d.backup_id not in manifests:
            continue
        m = manifests[d.backup_id]
        current = m.storage_class or default
        target = wanted[d.tier] if class_rank(wanted[d.tier]) > class_rank(current) else current
        if target == current and m.tier == d.tier:
            continue
        if target != current:
            moved[d.backup_id] = target
        if dry_run:
            continue
        if target != current:
            storage.set_storage_class(d.backup_id, target)
        storage.write_manifest(d.backup_id, m.model_copy(update={"tier": d.tier, "storage_class": target}).to_bytes())
    return moved


RETENTION_RECORDS = "retention"


def record_retention(storage, report: RetentionReport, at: datetime) -> None:  # noqa: ANN001
    """What this run removed and moved, per tier, beside the backups: the weekly report reads it."""
    import json

    data = {"at": at.isoformat(), "source": report.source,
            "removed": {i: report.tiers.get(i, "") for i in report.removed}, "moved": report.moved}
    storage.write_record(RETENTION_RECORDS, f"{at:%Y%m%d_%H%M%S_%f}-{report.source}.json",
                         json.dumps(data).encode())

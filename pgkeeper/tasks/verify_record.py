"""Writing a verification into the backup's manifest, and the run's artifacts."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.errors import NotFound, PgkeeperError
from pgkeeper.fmt import human_bytes, human_seconds
from pgkeeper.manifest import Manifest, Verification
from pgkeeper.slots import manifest_slot
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tasks.report import artifact_key
from pgkeeper.tasks.verify_checks import VerifyReport


def _storages_holding(repo: BackupRepository, source: str, backup_id: str) -> list:
    """The verified copy first, then any other copy of the same backup (local or offsite)."""
    found = [repo.storage(source)]
    other = "s3" if source == "local" else "local"
    try:
        extra = repo.storage(other)
        if extra.read_manifest(backup_id) is not None:
            found.append(extra)
    except (ValueError, PgkeeperError) as exc:
        # No offsite configured (or not reachable): the verified copy is recorded regardless.
        get_run_logger().debug("not recording in %s: %s", other, exc)
    return found


def verification_of(report: VerifyReport, at: datetime | None = None) -> Verification:
    """What the manifest keeps: ok means the backup itself is sound (tests 1-4)."""
    return Verification(
        at=at or datetime.now(UTC), method=report.method, ok=report.backup_ok,
        restore_seconds=report.restore_seconds,
        checks={c.key: f"{c.status} {c.title}" for c in report.checks},
    )


@task(name="record-verification", cache_policy=NO_CACHE, **RETRYABLE)
def record_verification(repo: BackupRepository, source: str, report: VerifyReport) -> Manifest:
    """Append the verification to the manifest (re-read just now) in every copy; atomic writes.
    One writer at a time per database, so two verify runs finishing together both get recorded."""
    verification = verification_of(report)
    updated: Manifest | None = None
    with manifest_slot(report.database):
        for storage in _storages_holding(repo, source, report.backup_id):
            data = storage.read_manifest(report.backup_id)
            if data is None:
                raise NotFound(f"backup {report.backup_id} disappeared from {storage.describe()} during verification")
            manifest = Manifest.from_bytes(data)
            manifest.verifications.append(verification)
            storage.write_manifest(report.backup_id, manifest.to_bytes())
            get_run_logger().info("verification recorded in %s", storage.location(report.backup_id))
            updated = updated or manifest
    assert updated is not None
    return updated


def history_rows(backups: list[Manifest]) -> list[dict[str, str]]:
    return [{
        "backup": m.backup_id,
        "finished": m.finished_at.strftime("%Y-%m-%d %H:%M UTC"),
        "size": human_bytes(m.size),
        "duration": human_seconds(m.duration_seconds),
        "rows": str(sum(m.tables.values())),
        "rto": human_seconds(m.last_restore_seconds),
        "status": m.status,
    } for m in reversed(backups)]


def report_verification(report: VerifyReport, history: list[Manifest]) -> None:
    """Two artifacts: this run's checks, and the database's recent backups (size, rows, RTO).
    Not a task: called in the flow, the artifacts belong to the flow run."""
    create_table_artifact(
        [{"test": str(c.number), "check": c.title, "result": c.status} for c in report.checks],
        key=artifact_key("verify", report.database),
        description=f"Verification of {report.backup_id} ({report.source}): "
                    + ("passed" if report.ok else "FAILED")
                    + (f", RTO {human_seconds(report.restore_seconds)}" if report.restore_seconds else ""),
    )
    create_table_artifact(
        history_rows(history),
        key=artifact_key("backup-history", report.database),
        description=f"The last {len(history)} backups of {report.database}",
    )

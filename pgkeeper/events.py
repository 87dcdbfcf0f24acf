"""The events pgkeeper runs emit, with their figures, for automations to act on.

`pgkeeper.backup.completed`, `pgkeeper.backup.verified` and `pgkeeper.wal.shipped` carry the
numbers of what happened (database, backup id, size, raw size, duration, rows, RTO, lag) as
their payload, so a user can build automations on them (a Slack message above 10 GB, a
verify chained to the backup). pgkeeper's own automations use them too: the success
notification, the verify deployment's trigger, and the alerts on absence (no event within
a window; see pgkeeper.deployments.alerting).

Every event's resource is the database, `pgkeeper.database.<name>`, as for warnings, with the
backup id and kind as labels. Emitting never fails a run: the backup is good either way.
"""

from __future__ import annotations

from typing import Any

from pgkeeper.manifest import Manifest

BACKUP_COMPLETED = "pgkeeper.backup.completed"
BACKUP_VERIFIED = "pgkeeper.backup.verified"
WAL_SHIPPED = "pgkeeper.wal.shipped"
RESOURCE_PREFIX = "pgkeeper.database."
# The automation `pgkeeper setup` creates on BACKUP_COMPLETED; while it exists, it notifies.
SUCCESS_AUTOMATION = "pgkeeper: notify on completed backup"
WEEKLY_REPORT = "pgkeeper.report.weekly"
REPORT_RESOURCE = "pgkeeper.report.weekly"
# The automation `pgkeeper setup` creates on WEEKLY_REPORT: the report on every channel.
REPORT_AUTOMATION = "pgkeeper: send the weekly report"


def database_resource(database: str, **labels: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{RESOURCE_PREFIX}{database}", "prefect.resource.name": database,
            **{f"pgkeeper.{k.replace('_', '-')}": str(v) for k, v in labels.items()}}


def emit(event: str, database: str, payload: dict[str, Any], **labels: str) -> bool:
    """Emit `event` about `database`; False (and a log line) if it could not be sent."""
    from prefect.events import emit_event
    from prefect.logging import get_logger

    try:
        return emit_event(event=event, resource=database_resource(database, **labels),
                          payload={k: v for k, v in payload.items() if v is not None}) is not None
    except Exception as exc:  # an API hiccup must not turn a good backup into a failed run
        get_logger("pgkeeper").warning("could not emit %s: %s", event, type(exc).__name__)
        return False


def weekly_report(subject: str, body: str, figures: dict[str, Any] | None = None) -> bool:
    """The weekly report as an event; the report automation sends subject and body as they are."""
    from prefect.events import emit_event
    from prefect.logging import get_logger

    try:
        return emit_event(event=WEEKLY_REPORT, resource={"prefect.resource.id": REPORT_RESOURCE},
                          payload={"subject": subject, "message": body, **(figures or {})}) is not None
    except Exception as exc:
        get_logger("pgkeeper").warning("could not emit %s: %s", WEEKLY_REPORT, type(exc).__name__)
        return False


def backup_kind(m: Manifest) -> str:
    """'backup' for the nightly kind, 'pre-restore' for a restore's safety copy, else the manifest's kind."""
    if "pre-restore" in m.labels:
        return "pre-restore"
    return "backup" if m.kind == "logical" else m.kind


def backup_figures(m: Manifest) -> dict[str, Any]:
    """The numbers of one backup, as events and the catalog carry them."""
    return {
        "database": m.database, "backup_id": m.backup_id, "kind": m.kind, "labels": m.labels,
        "size_bytes": m.size, "raw_size_bytes": m.raw_size, "database_size_bytes": m.database_size,
        "ratio": round(m.ratio, 2) if m.ratio else None, "compression": m.compression,
        "duration_seconds": round(m.duration_seconds, 3), "tables": len(m.tables),
        "rows": sum(m.tables.values()), "indexes": m.objects.get("indexes", 0),
        "started_at": m.started_at.isoformat(), "finished_at": m.finished_at.isoformat(),
        "status": m.status, "rto_seconds": m.last_restore_seconds,
    }


def backup_completed(m: Manifest, subject: str, message: str, drill: tuple[str, float] | None = None) -> bool:
    """After a backup: its figures, plus the notification's subject and text (the success
    automation sends those as they are, so every channel gets the same lines)."""
    payload = {**backup_figures(m), "subject": subject, "message": message}
    if drill:
        payload.update(rto_seconds=round(drill[1], 3), rto_backup_id=drill[0])
    return emit(BACKUP_COMPLETED, m.database, payload, backup_id=m.backup_id, backup_kind=backup_kind(m))


def backup_verified(report: Any, manifest: Manifest | None = None) -> bool:
    """After a passed verification (report: a VerifyReport); method 'quick' or 'restore'."""
    payload = {**(backup_figures(manifest) if manifest else {}), "database": report.database,
               "backup_id": report.backup_id, "method": report.method, "source": report.source,
               "rto_seconds": report.restore_seconds, "anomalies": report.anomalies,
               "checks": [c.line() for c in report.checks], "message": report.lines()[-1]}
    return emit(BACKUP_VERIFIED, report.database, payload, backup_id=report.backup_id,
                verification_method=report.method)


def wal_shipped(database: str, status: Any, shipped: Any) -> bool:
    """After a wal-ship run that moved segments (status: ArchiverStatus, shipped: ShipResult)."""
    payload = {"database": database, "server": status.server, "uploaded": shipped.uploaded,
               "already_there": shipped.already_there, "bytes": shipped.bytes,
               "left_in_spool": shipped.left_in_spool, "destination": shipped.destination,
               "archived_count": status.archived_count, "failed_count": status.failed_count,
               "last_archived_wal": status.last_archived_wal,
               "last_archived_time": status.last_archived_time.isoformat() if status.last_archived_time else None,
               "pending_segments": status.pending_segments, "lag_seconds": round(status.lag_seconds, 3)}
    return emit(WAL_SHIPPED, database, payload, server=status.server)

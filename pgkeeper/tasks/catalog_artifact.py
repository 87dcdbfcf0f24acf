"""The catalog view in the UI: one keyed table artifact, replaced by every backup, verify,
retention and WAL run, so the Artifacts page always shows the repository as it is now.

Read from the repository (the storage is the catalog); best effort: a run whose catalog
cannot be published still did its work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pgkeeper.catalog import list_backups
from pgkeeper.fmt import human_bytes, human_seconds
from pgkeeper.manifest import Manifest

CATALOG_KEY = "pgkeeper-catalog"


def catalog_rows(backups: list[Manifest], now: datetime | None = None) -> list[dict[str, Any]]:
    """Newest first: status, verification, RTO, size and ratio, and for physical backups the
    point from which they can recover (and how far the last PITR drill got)."""
    now = now or datetime.now(UTC)
    rows = []
    for m in reversed(backups):
        last = m.verifications[-1] if m.verifications else None
        drill = m.last_drill
        window = "-"
        if m.kind == "physical":
            window = f"from {m.finished_at:%Y-%m-%d %H:%M} UTC" + (
                f" to {drill.recovered_to:%Y-%m-%d %H:%M} UTC (drill)" if drill and drill.recovered_to else " on")
        rows.append({
            "backup": m.backup_id, "database": m.database, "kind": m.kind, "status": m.status,
            "verified": f"{last.method} {'ok' if last.ok else 'FAILED'} {last.at:%Y-%m-%d %H:%M}" if last else "never",
            "RTO": human_seconds(m.last_restore_seconds), "size": human_bytes(m.size),
            "ratio": f"{m.ratio:.1f}x" if m.ratio else "-", "age": human_seconds(m.age_seconds(now)),
            "recoverability": window, "labels": ", ".join(m.labels) or "-",
        })
    return rows


def publish_catalog(repo: Any, source: str = "local") -> str | None:
    """Replace the catalog artifact with the repository's current list; its id, or None."""
    from prefect.artifacts import create_table_artifact
    from prefect.logging import get_logger

    try:
        storage = repo.storage(source)
        rows = catalog_rows(list_backups(storage))
        artifact_id = create_table_artifact(
            rows, key=CATALOG_KEY,
            description=f"pgkeeper catalog of {storage.describe()}: {len(rows)} backup(s), newest first")
        return str(artifact_id)
    except Exception as exc:  # the run's own outcome stands
        get_logger("pgkeeper").warning("could not publish the catalog artifact: %s", type(exc).__name__)
        return None

"""Warnings that must reach people: logged, and emitted as a Prefect event.

A run that finds something worrying (low disk, a shrinking table, archive lag) but still
completes calls `warn(...)`. The event `pgkeeper.warning` is what the notification
automation listens for, so the mail goes out without the flow knowing about mail.
"""

from __future__ import annotations

from typing import Any

WARNING_EVENT = "pgkeeper.warning"


def warn(kind: str, message: str, database: str | None = None, **details: Any) -> None:
    """Log `message` as a warning and emit a pgkeeper.warning event (kind: low-disk, anomaly, ...)."""
    from prefect.events import emit_event
    from prefect.logging import get_logger, get_run_logger

    try:
        logger = get_run_logger()
    except Exception:
        logger = get_logger("pgkeeper")
    logger.warning(message)
    resource = {"prefect.resource.id": f"pgkeeper.database.{database or 'unknown'}",
                "prefect.resource.name": database or "unknown", "pgkeeper.warning.kind": kind}
    emit_event(event=WARNING_EVENT, resource=resource,
               payload={"kind": kind, "message": message, "database": database,
                        **{k: v for k, v in details.items() if v is not None}})

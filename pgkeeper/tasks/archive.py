"""Backups in an S3 archive class: make one readable before restore, verify or pitr reads it.

GLACIER and DEEP_ARCHIVE objects need a restore request (a temporary readable copy) before a GET
succeeds. `make_readable` asks for one with the chosen retrieval tier, says how long S3 usually
takes, then either waits with progress in the run (short polls; a run started again finds the
request under way and just waits on) or stops with one line saying when to come back.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from pgkeeper.errors import BadName, NotReadableYet
from pgkeeper.storage.interface import ArchiveState

# How long AWS says a restore takes (upper ends), per class and retrieval tier.
ETA = {("GLACIER", "Expedited"): timedelta(minutes=5), ("GLACIER", "Standard"): timedelta(hours=5),
       ("GLACIER", "Bulk"): timedelta(hours=12), ("DEEP_ARCHIVE", "Standard"): timedelta(hours=12),
       ("DEEP_ARCHIVE", "Bulk"): timedelta(hours=48)}
# Days the restored copy stays readable: enough for a restore or a drill that starts late.
RESTORED_DAYS = 3


RETRIEVAL_TIERS = ("Expedited", "Standard", "Bulk")


def eta(storage_class: str, retrieval_tier: str) -> timedelta:
    # DEEP_ARCHIVE has no Expedited tier: S3 refuses it, Standard is the nearest.
    return ETA.get((storage_class, retrieval_tier)) or ETA.get((storage_class, "Standard")) or timedelta(hours=12)


def make_readable(storage, backup_id: str, retrieval_tier: str = "Standard", wait: bool = False,  # noqa: ANN001
                  poll_seconds: float = 60.0, wait_timeout_seconds: float | None = None) -> ArchiveState:
    """The backup's data files readable now, or NotReadableYet in one line (a restore requested)."""
    if retrieval_tier not in RETRIEVAL_TIERS:
        raise BadName(f"retrieval tier {retrieval_tier!r}: use {', '.join(RETRIEVAL_TIERS)}")
    log = _logger()
    state = storage.archive_state(backup_id)
    if state.readable:
        return state
    expected = eta(state.storage_class, retrieval_tier)
    asked = datetime.now(UTC)
    if state.restoring:
        log.info("%s is in %s; a restore request is already under way (usually done within %s of it)",
                 backup_id, state.storage_class, _human(expected))
    else:
        state = storage.request_restore(backup_id, RESTORED_DAYS, retrieval_tier)
        log.info("%s is in %s: restore requested (%s retrieval, usually within %s; readable for %d days)",
                 backup_id, state.storage_class, retrieval_tier, _human(expected), RESTORED_DAYS)
    if state.readable:
        return state
    come_back = asked + expected
    if not wait:
        raise NotReadableYet(f"backup {backup_id} is in {state.storage_class}: a restore request ({retrieval_tier}) "
                             f"is under way; come back after {come_back:%Y-%m-%d %H:%M} UTC, or run with "
                             "--wait-for-archive")
    limit = time.monotonic() + (wait_timeout_seconds if wait_timeout_seconds is not None
                                else 2 * expected.total_seconds())
    progress = _progress_artifact(backup_id)
    while not state.readable:
        if time.monotonic() >= limit:
            raise NotReadableYet(f"backup {backup_id} is still being restored from {state.storage_class}; the "
                                 f"request stands: come back after {come_back:%Y-%m-%d %H:%M} UTC")
        time.sleep(poll_seconds)
        state = storage.archive_state(backup_id)
        waited = datetime.now(UTC) - asked
        share = min(99.0, 100 * waited / expected) if expected else 0.0
        log.info("waiting for %s to leave %s: %s of about %s", backup_id, state.storage_class, _human(waited),
                 _human(expected))
        _update(progress, 100.0 if state.readable else share)
    log.info("%s is readable (restored copy%s)", backup_id,
             f" until {state.ready_until:%Y-%m-%d %H:%M} UTC" if state.ready_until else "")
    return state


def _logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:  # called outside a run (a test, a script): plain logging
        return logging.getLogger("pgkeeper.archive")


def _human(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s"


def _progress_artifact(backup_id: str):  # noqa: ANN202 - the artifact's id, or None outside a run
    from prefect.artifacts import create_progress_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:  # no run to show it in
        return None
    try:
        return create_progress_artifact(progress=0.0, description=f"S3 restore of archived backup {backup_id}")
    except Exception:  # the progress bar is a courtesy; the log says the same
        return None


def _update(artifact_id, share: float) -> None:  # noqa: ANN001
    if artifact_id is None:
        return
    from prefect.artifacts import update_progress_artifact

    try:
        update_progress_artifact(artifact_id=artifact_id, progress=share)
    except Exception:
        pass

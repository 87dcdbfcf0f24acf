"""The pre-restore safety backup, taken while the shadow is being restored.

Both only read the target (the backup) or write a database of their own (the shadow), so they
can run side by side; the swap waits for the backup (flows/restore.py calls `safety_result`
before it) and a failed safety backup stops the restore before anything is swapped. The backup
flow is handed in by the caller: tasks never import flows.

The backup yields the CPU to the restore (pgkeeper/yielding.py): its pg_dump and pg_restore --list
children run at nice 19, and its server backends too where this OS user may renice them. It is
the same backup, proven the same way, only scheduled last: the restore the user waits for gets
the cores first, and the backup fills what the restore leaves idle.
Once the restore waits for it (`safety_result`, or `wait_quietly` after a failure) it gets its
priority back where the OS lets this user, so other work on a busy machine does not stretch the wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect import get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture

from pgkeeper.runinfo import RUN_TAG
from pgkeeper.yielding import Yielding, yielding_work

PRE_RESTORE_LABELS = ["pre-restore"]

# The running safety backups' records by task run id, so that the restore waiting for one can end its
# yielding; a record is made by whichever side comes first (the wait may come before the task starts).
_RECORDS: dict[UUID, Yielding] = {}
_LOCK = threading.Lock()


def _record(task_run_id: UUID) -> Yielding:
    with _LOCK:
        return _RECORDS.setdefault(task_run_id, Yielding())


@task(name="safety-backup", cache_policy=NO_CACHE)
def safety_backup(backup_flow: Callable[..., Any], params: dict[str, Any]) -> str:
    """Run the backup flow (a subflow of this task) on the target; its backup id. The backup flow
    verifies its file reads back before it writes the manifest, so an id means a proven backup.

    The restore's task runs are untagged (runinfo.untagged_tasks); the backup flow run gets the
    `pgkeeper` tag back here, so its failure still matches the failure automation. It runs at the
    lowest CPU priority (its tools and server backends); what was lowered, and what could not be,
    is in the log at debug level."""
    context = TaskRunContext.get()
    run_id = context.task_run.id if context else None
    record = _record(run_id) if run_id else Yielding()
    try:
        with tags(RUN_TAG), yielding_work(record):
            backup_id: str = backup_flow(**params, labels=PRE_RESTORE_LABELS).backup_id
    finally:
        get_run_logger().debug("safety backup at the lowest CPU priority: %s", "; ".join(record.notes) or "-")
        with _LOCK:
            _RECORDS.pop(run_id, None)  # type: ignore[arg-type]
    return backup_id


def _stop_yielding(future: PrefectFuture[str]) -> None:
    """The restore now waits for the safety backup: it yields no longer. (A future whose thread has
    ended needs nothing; asking its state would cost an API call.)"""
    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is None or not wrapped.done():
        _record(future.task_run_id).stop()


def start_safety_backup(backup_flow: Callable[..., Any], **params: Any) -> PrefectFuture[str]:
    """Start the safety backup in the flow's task runner (a thread) and return at once."""
    return safety_backup.submit(backup_flow, params)


def safety_result(future: PrefectFuture[str] | None) -> str | None:
    """The safety backup's id once it has finished; raises its error if it failed."""
    if future is None:
        return None
    _stop_yielding(future)
    return future.result()


def wait_quietly(future: PrefectFuture[str] | None) -> None:
    """After a failure elsewhere: let a running safety backup finish (it is a valid backup of the
    untouched target), so the run ends with nothing of its own still running."""
    if future is not None:
        _stop_yielding(future)
        future.wait()

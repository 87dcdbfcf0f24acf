"""The pre-restore safety backup, taken while the shadow is being restored.

Both only read the target (the backup) or write a database of their own (the shadow), so they
can run side by side; the swap waits for the backup (flows/restore.py calls `safety_result`
before it) and a failed safety backup stops the restore before anything is swapped. The backup
flow is handed in by the caller: tasks never import flows.

The backup yields the CPU to the restore (pgkeeper/yielding.py): it runs in a thread of its own
at nice 19, its pg_dump and pg_restore --list children and its server backends too where this
OS user may renice them. It is the same backup, proven the same way, only scheduled last: the
restore the user waits for gets the cores first, and the backup fills what the restore leaves idle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from pgkeeper.runinfo import RUN_TAG
from pgkeeper.yielding import run_yielding

PRE_RESTORE_LABELS = ["pre-restore"]


@task(name="safety-backup", cache_policy=NO_CACHE)
def safety_backup(backup_flow: Callable[..., Any], params: dict[str, Any]) -> str:
    """Run the backup flow (a subflow of this task) on the target; its backup id. The backup flow
    verifies its file reads back before it writes the manifest, so an id means a proven backup.

    The restore's task runs are untagged (runinfo.untagged_tasks); the backup flow run gets the
    `pgkeeper` tag back here, so its failure still matches the failure automation. It runs at the
    lowest CPU priority; what was lowered, and what could not be, is in the log at debug level."""
    with tags(RUN_TAG):
        backup_id, lowered = run_yielding(lambda: backup_flow(**params, labels=PRE_RESTORE_LABELS).backup_id,
                                          "the safety backup")
    get_run_logger().debug("safety backup at the lowest CPU priority: %s", "; ".join(lowered.notes))
    return backup_id


def start_safety_backup(backup_flow: Callable[..., Any], **params: Any) -> PrefectFuture[str]:
    """Start the safety backup in the flow's task runner (a thread) and return at once."""
    return safety_backup.submit(backup_flow, params)


def safety_result(future: PrefectFuture[str] | None) -> str | None:
    """The safety backup's id once it has finished; raises its error if it failed."""
    return future.result() if future is not None else None


def wait_quietly(future: PrefectFuture[str] | None) -> None:
    """After a failure elsewhere: let a running safety backup finish (it is a valid backup of the
    untouched target), so the run ends with nothing of its own still running."""
    if future is not None:
        future.wait()

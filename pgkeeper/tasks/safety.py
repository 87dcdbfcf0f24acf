"""The safety backup of what a replace restore replaced, taken after the swap.

The swap keeps the previous database, renamed `<target>_pre_restore_<time>` and marked (pgkeeper/
old_copy.py): that copy is exactly what was replaced, every write up to the swap included, and
nobody writes to it any more. Its backup is recorded under the target's name and comment, labelled
`pre-restore`, and the copy is held until that backup is listed. Taken after the swap, the backup
no longer shares the machine with the restore the user waits for: the database is back in service
a backup sooner. The backup flow is handed in by the caller: tasks never import flows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, tags

from pgkeeper.fmt import first_line
from pgkeeper.runinfo import KIND_PRE_RESTORE, RUN_TAG

PRE_RESTORE_LABELS = [KIND_PRE_RESTORE]


def back_up_old_copy(backup_flow: Callable[..., Any], copy: str, **params: Any) -> tuple[str | None, str | None]:
    """Run the backup flow (a subflow) on the pre-restore copy: (its backup id, None), or (None,
    why it failed). The backup flow verifies its file reads back before it writes the manifest, so
    an id means a proven backup; a failure leaves the copy held, and the backup's own failed run
    raises the alarm.

    The restore's task runs are untagged (runinfo.untagged_tasks); the backup flow run gets the
    `pgkeeper` tag back here, so its failure still matches the failure automation."""
    try:
        with tags(RUN_TAG):
            return backup_flow(database=copy, labels=PRE_RESTORE_LABELS, **params).backup_id, None
    except Exception as exc:
        reason = first_line(exc, type(exc).__name__)
        get_run_logger().warning("the safety backup of %s failed: %s", copy, reason)
        return None, reason

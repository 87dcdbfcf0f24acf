"""The mark a replace restore leaves on the database it replaced (`<target>_pre_restore_<time>`).

The mark is that database's comment: a line a person reads in `\\l+`, then one line of JSON that
pgkeeper reads back. It says whose copy this is, until when it is kept, the comment the database
had before (the swap's own line takes its place), and where its safety backup stands. The safety
backup is taken from this copy after the swap, so it holds exactly what was replaced; while it is
`pending` the copy is never dropped, by expiry or by `--drop-old` (tasks/swap.py). A backup of a
marked copy is recorded under the name and comment the database had (tasks/store.py), and then
writes its id into the mark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pgkeeper.runinfo import KIND_PRE_RESTORE

if TYPE_CHECKING:
    from pgkeeper.manifest import DatabaseProperties

OLD_COPY_MARK = "pgkeeper pre-restore copy"
PENDING = "pending"
_PENDING_NOTE = "; its safety backup is pending"


@dataclass(frozen=True)
class OldCopyMark:
    of: str  # the database's name before the restore
    comment: str | None  # its comment before the restore
    safety: str | None  # None: none asked for; PENDING; or the safety backup's id


def old_copy_comment(target: str, backup_id: str, keep_hours: float, now: datetime,
                     previous_comment: str | None = None, safety_pending: bool = False) -> str:
    until = (now + timedelta(hours=keep_hours)).astimezone(UTC).isoformat(timespec="seconds")
    safety = _PENDING_NOTE if safety_pending else ""
    data = {"of": target, "comment": previous_comment, "safety": PENDING if safety_pending else None}
    return (f"{OLD_COPY_MARK} of {target}, replaced by backup {backup_id} at "
            f"{now.astimezone(UTC).isoformat(timespec='seconds')}; keep until {until}{safety}\n"
            f"{json.dumps(data)}")


def read_mark(comment: str | None) -> OldCopyMark | None:
    """The mark in a database comment; None for any other comment (a copy made by a pgkeeper
    before the mark carried data has none: nothing is pending for it)."""
    if not comment or not comment.startswith(OLD_COPY_MARK) or "\n" not in comment:
        return None
    try:
        data = json.loads(comment.rsplit("\n", 1)[1])
        return OldCopyMark(of=str(data["of"]), comment=data.get("comment"), safety=data.get("safety"))
    except (ValueError, KeyError, TypeError):
        return None


def with_safety_backup(comment: str, backup_id: str) -> str:
    """The mark once the copy's safety backup is listed."""
    human, data = comment.rsplit("\n", 1)
    record = json.loads(data)
    record["safety"] = backup_id
    human = human.replace(_PENDING_NOTE, "") + f"; safety backup {backup_id}"
    return f"{human}\n{json.dumps(record)}"


def recorded_as(database: str, properties: DatabaseProperties | None,
                labels: list[str]) -> tuple[str, DatabaseProperties | None, list[str]]:
    """What a backup of `database` is recorded as: a pre-restore copy under the name and comment it
    had before the restore, labelled `pre-restore` (a restore's `latest` passes it over); any other
    database as it is."""
    mark = read_mark(properties.comment if properties else None)
    if mark is None or properties is None:
        return database, properties, labels
    return (mark.of, properties.model_copy(update={"comment": mark.comment}),
            labels if KIND_PRE_RESTORE in labels else [*labels, KIND_PRE_RESTORE])

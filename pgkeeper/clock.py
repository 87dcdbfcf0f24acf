"""A clock you don't have to trust: backup ids come from the local clock, so check it first.

Backup ids (`backup_YYYYMMDD_HHMMSS`) are the time line retention plans on. A worker whose
clock jumped to 2030 would name a backup that makes every other one look years old; one in
2000 would name a backup its own run's retention deletes. So a new id is refused when this
machine's clock and the database server's disagree by more than MAX_SKEW, or when the id
would not sort after the newest backup already in the repository.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pgkeeper.errors import ClockSkew
from pgkeeper.names import backup_id_time, is_backup_id

MAX_SKEW = timedelta(minutes=5)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def first_backup_time(existing_ids: list[str], now: datetime | None = None,
                      reference: datetime | None = None) -> datetime:
    """The earliest time a new backup id may carry, or ClockSkew (one line).

    `reference` is an independent clock (the database server's now()); `existing_ids` are the
    ids already in the repository, complete or not."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if reference is not None and abs(now - reference) > MAX_SKEW:
        raise ClockSkew(f"this machine's clock says {_fmt(now)} but the database server's says {_fmt(reference)}: "
                        "refusing to name a backup by a clock that is off (fix NTP and run again)")
    ids = sorted(i for i in existing_ids if is_backup_id(i))
    if not ids:
        return now
    newest = backup_id_time(ids[-1])
    if newest > now + MAX_SKEW:
        raise ClockSkew(f"the newest backup {ids[-1]} is from {_fmt(newest)}, after now ({_fmt(now)}): a clock "
                        "was wrong when it was named, or is now; refusing to make a backup that sorts before it")
    return max(now, newest + timedelta(seconds=1))


def is_future(taken_at: datetime, now: datetime | None = None) -> bool:
    return taken_at > (now or datetime.now(UTC)) + MAX_SKEW

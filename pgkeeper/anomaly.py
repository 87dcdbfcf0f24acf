"""Spotting a backup that shrank suspiciously compared with the last one we proved good.

A backup that restores perfectly can still be a disaster: the table it holds may have been
emptied by a bad deploy an hour before. Comparing with the previous *verified* backup of the
same database catches that while the older, good backup is still kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgkeeper.manifest import Manifest

DEFAULT_THRESHOLD = 0.5


def previous_verified(backups: Sequence[Manifest], current: Manifest) -> Manifest | None:
    """The newest backup of the same database, older than `current`, that passed a restore drill."""
    earlier = [m for m in backups
               if m.database == current.database and m.backup_id < current.backup_id and m.status == "verified"]
    return earlier[-1] if earlier else None


def _fell(before: int, after: int, threshold: float) -> bool:
    # A table that was empty cannot fall; a fall to zero from any size counts.
    return before > 0 and (before - after) / before > threshold


def find_anomalies(previous: Manifest, current: Manifest, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """One line per drop larger than `threshold` (a fraction): total size, then each table."""
    if not 0 < threshold < 1:
        raise ValueError(f"anomaly threshold must be between 0 and 1, not {threshold}")
    found = []
    if _fell(previous.size, current.size, threshold):
        found.append(f"backup size fell {_pct(previous.size, current.size)} "
                     f"({previous.size} -> {current.size} bytes)")
    for table, before in sorted(previous.tables.items()):
        after = current.tables.get(table)
        if after is None:
            if before > 0:
                found.append(f"table {table} is gone (had {before} rows)")
        elif _fell(before, after, threshold):
            found.append(f"table {table} fell {_pct(before, after)} ({before} -> {after} rows)")
    return found


def _pct(before: int, after: int) -> str:
    return f"{(before - after) / before:.0%}"


def describe(previous: Manifest, current: Manifest, anomalies: list[str]) -> str:
    """The one-line warning a person receives."""
    return (f"backup {current.backup_id} of {current.database} shrank since verified backup "
            f"{previous.backup_id}: " + "; ".join(anomalies))

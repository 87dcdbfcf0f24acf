"""Which backups to keep: a pure policy (no I/O), the same for the local directory and S3.

Grandfather-father-son over complete backups, per (kind, database) group:
  - daily:   every backup of the last `daily_days` calendar days (UTC): the old scripts'
             RETENTION_DAYS, so nothing they kept is removed, however often backups run,
  - weekly:  the newest backup of each of the last `weekly_weeks` ISO weeks,
  - monthly: the newest backup of each of the last `monthly_months` calendar months,
  - minimum: the newest `min_count` backups, whatever their age,
  - always:  the group's newest backup and its newest *verified* backup.

Windows count back from the group's newest backup, not from the clock: when backups stop
arriving, nothing more expires, so a broken schedule never eats the history it leaves behind.

Nothing is removed at all while the newest backup failed:
  - the newest backup anywhere in the repository is incomplete (no manifest: it crashed, or is
    still being written) -> nothing is removed in any group, since we cannot tell its database;
  - the newest complete backup of a group failed its last verification -> nothing is removed
    in that group.
Only complete backups count towards the rules. A complete backup whose last verification
failed is kept inside the daily window like any other, but fills no weekly/monthly slot (a good
backup of the same period is preferred) and counts towards the minimum only when there are
not enough good ones. Incomplete backups get no
decision here: garbage collection removes them once they are old enough.
Labels (e.g. "pre-restore") change nothing: such backups are kept by the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from pgkeeper.clock import MAX_SKEW


@dataclass(frozen=True)
class RetentionPolicy:
    daily_days: int = 30
    weekly_weeks: int = 8
    monthly_months: int = 12
    min_count: int = 3

    def describe(self) -> str:
        return (f"daily {self.daily_days} days, weekly {self.weekly_weeks} weeks, "
                f"monthly {self.monthly_months} months, at least {self.min_count}")


@dataclass(frozen=True)
class BackupRecord:
    backup_id: str
    taken_at: datetime  # UTC; the time in the backup id
    complete: bool  # has a readable manifest
    status: str = "unverified"  # Manifest.status: unverified, checked, verified, failed
    group: str = ""  # e.g. "logical/crm"; unknown ("") for an incomplete backup
    labels: tuple[str, ...] = ()

    @property
    def good(self) -> bool:
        return self.complete and self.status != "failed"


@dataclass(frozen=True)
class Decision:
    backup_id: str
    group: str
    keep: bool
    reason: str


@dataclass
class _Keep:
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def add(self, backup_id: str, reason: str) -> None:
        self.reasons.setdefault(backup_id, []).append(reason)


def _newest_first(records: Iterable[BackupRecord]) -> list[BackupRecord]:
    return sorted(records, key=lambda r: (r.taken_at, r.backup_id), reverse=True)


def _week_start(d: date) -> date:
    return date.fromordinal(d.toordinal() - d.weekday())


def _newest_per_period(good: list[BackupRecord], period: Callable[[BackupRecord], Hashable],
                       distance: Callable[[BackupRecord], int], count: int) -> dict[str, Hashable]:
    """backup id -> period, for the newest backup of each of the `count` most recent periods."""
    chosen: dict[str, Hashable] = {}
    seen: set[Hashable] = set()
    for r in good:  # newest first, so the first of each period is its newest
        key = period(r)
        if key in seen:
            continue
        seen.add(key)
        if 0 <= distance(r) < count:
            chosen[r.backup_id] = key
    return chosen


def _plan_group(group: str, items: list[BackupRecord], policy: RetentionPolicy) -> list[Decision]:
    newest = items[0]
    if newest.status == "failed":
        why = f"the newest backup of {group} ({newest.backup_id}) failed its last verification: removing nothing"
        return [Decision(r.backup_id, group, True, why) for r in items]

    keep = _Keep()
    good = [r for r in items if r.good]
    anchor = newest.taken_at.date()  # newest is good here
    keep.add(newest.backup_id, "newest backup")
    verified = next((r for r in items if r.status == "verified"), None)
    if verified is not None:
        keep.add(verified.backup_id, "newest verified backup")

    failed = [r for r in items if not r.good]
    for r in (good + failed)[:max(policy.min_count, 0)]:
        keep.add(r.backup_id, f"one of the newest {policy.min_count}")

    for r in items:
        if (anchor - r.taken_at.date()).days < policy.daily_days:
            keep.add(r.backup_id, f"daily: within the last {policy.daily_days} days")

    anchor_week = _week_start(anchor)
    weekly = _newest_per_period(
        good, lambda r: _week_start(r.taken_at.date()),
        lambda r: (anchor_week - _week_start(r.taken_at.date())).days // 7, policy.weekly_weeks)
    for backup_id, week in weekly.items():
        iso = week.isocalendar()  # type: ignore[attr-defined]
        keep.add(backup_id, f"weekly: newest of {iso.year}-W{iso.week:02d}")

    anchor_month = anchor.year * 12 + anchor.month - 1
    monthly = _newest_per_period(
        good, lambda r: (r.taken_at.year, r.taken_at.month),
        lambda r: anchor_month - (r.taken_at.year * 12 + r.taken_at.month - 1), policy.monthly_months)
    for backup_id, (year, month) in monthly.items():  # type: ignore[misc]
        keep.add(backup_id, f"monthly: newest of {year}-{month:02d}")

    decisions = []
    for r in items:
        reasons = keep.reasons.get(r.backup_id)
        if reasons:
            decisions.append(Decision(r.backup_id, group, True, "; ".join(reasons)))
        elif not r.good:
            decisions.append(Decision(r.backup_id, group, False,
                                      "last verification failed, and newer good backups cover its place"))
        else:
            decisions.append(Decision(r.backup_id, group, False, f"outside every rule ({policy.describe()})"))
    return decisions


def plan(records: Iterable[BackupRecord], policy: RetentionPolicy, now: datetime | None = None,
         protect: Iterable[str] = ()) -> list[Decision]:
    """One decision, with its reason, for every complete backup; newest first within a group.

    With `now`, a newest backup more than the allowed skew in the future (a clock that was
    wrong when it was named) makes the plan remove nothing: windows counted from it would
    expire good backups. Backups in `protect` (the one this run just made) are always kept."""
    decisions = _plan(list(records), policy, now)
    keep = set(protect)
    return [Decision(d.backup_id, d.group, True, "made by this run") if d.backup_id in keep and not d.keep else d
            for d in decisions]


def _plan(records: list[BackupRecord], policy: RetentionPolicy, now: datetime | None) -> list[Decision]:
    complete = [r for r in records if r.complete]
    if not complete:
        return []
    newest = _newest_first(records)[0]
    if now is not None and newest.taken_at > now + MAX_SKEW:
        why = (f"the newest backup ({newest.backup_id}) is dated after now ({now:%Y-%m-%d %H:%M} UTC): a clock "
               "was wrong; removing nothing until it is moved aside")
        return [Decision(r.backup_id, r.group, True, why) for r in _newest_first(complete)]
    if not newest.complete:
        why = f"the newest backup ({newest.backup_id}) is incomplete, failed or still running: removing nothing"
        return [Decision(r.backup_id, r.group, True, why) for r in _newest_first(complete)]
    groups: dict[str, list[BackupRecord]] = {}
    for r in _newest_first(complete):
        groups.setdefault(r.group, []).append(r)
    decisions = []
    for group in sorted(groups):
        decisions += _plan_group(group, groups[group], policy)
    return decisions


def to_remove(decisions: Iterable[Decision]) -> list[str]:
    return sorted(d.backup_id for d in decisions if not d.keep)

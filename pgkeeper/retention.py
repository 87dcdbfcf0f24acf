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
    tier: str = ""  # tiered policies: the tier whose window holds the backup now (its storage class's)


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


def _plan(records: list[BackupRecord], policy: RetentionPolicy, now: datetime | None,
          plan_group: Callable[[str, list[BackupRecord]], list[Decision]] | None = None) -> list[Decision]:
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
        decisions += (plan_group or (lambda g, items: _plan_group(g, items, policy)))(group, groups[group])
    return decisions


def to_remove(decisions: Iterable[Decision]) -> list[str]:
    return sorted(d.backup_id for d in decisions if not d.keep)


# -- tiers: where each kind of backup is kept, for how long, in which S3 storage class ---------

TIERS = ("daily", "weekly", "monthly")
# S3 storage classes from cheapest-to-read to cheapest-to-keep. A backup only moves up this list:
# reading an archived object back needs a restore request, so it never moves down.
CLASS_ORDER = ("STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA", "GLACIER_IR", "GLACIER",
               "DEEP_ARCHIVE")
# Classes whose objects cannot be read without a restore request (GLACIER_IR can).
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")


def class_rank(storage_class: str | None) -> int:
    c = (storage_class or "STANDARD").upper()
    return CLASS_ORDER.index(c) if c in CLASS_ORDER else 0


@dataclass(frozen=True)
class Tier:
    name: str  # daily, weekly or monthly
    local_days: int  # 0: not kept on local disk by this tier
    s3_days: int  # 0: not kept in the bucket by this tier
    s3_class: str = "STANDARD"


@dataclass(frozen=True)
class TierPolicy:
    """Per tier, where a backup is kept and how long. Every backup is a daily; the newest good
    backup of a finished ISO week is also a weekly, of a finished calendar month also a monthly.
    A backup is kept in a place while any tier it belongs to holds it there; in the bucket it sits
    in the class of the shortest window that still holds it (a monthly is STANDARD while it is a
    recent daily, then the weekly class, then the monthly archive class), so a recent backup
    never needs a restore request. Defaults: the old scripts' policy (daily 30 days local,
    weekly 90 days in S3, monthly one year in S3 Glacier)."""

    daily: Tier = Tier("daily", 30, 30, "STANDARD")
    weekly: Tier = Tier("weekly", 0, 90, "STANDARD_IA")
    monthly: Tier = Tier("monthly", 0, 365, "GLACIER")
    min_count: int = 3

    def tiers(self) -> tuple[Tier, Tier, Tier]:
        return (self.daily, self.weekly, self.monthly)

    def window(self, tier: Tier, source: str, offsite: bool = True) -> int:
        """Days `tier` keeps a backup in `source`. Without a bucket, the local disk is the only
        place: it keeps what the bucket would have kept too."""
        if source == "s3":
            return tier.s3_days
        return tier.local_days if offsite else max(tier.local_days, tier.s3_days)

    def describe(self) -> str:
        return ", ".join(f"{t.name} local {t.local_days}d / S3 {t.s3_days}d {t.s3_class}" for t in self.tiers()) + \
            f", at least {self.min_count}"


def tier_membership(items: list[BackupRecord]) -> dict[str, set[str]]:
    """backup id -> the tiers it belongs to, for one group (newest first). Only a finished week or
    month has its weekly or monthly: the newest of the current one is still changing."""
    if not items:
        return {}
    anchor = items[0].taken_at.date()
    out = {r.backup_id: {"daily"} for r in items}
    good = [r for r in items if r.good]
    weeks = _newest_per_period(good, lambda r: _week_start(r.taken_at.date()),
                               lambda r: 0 if _week_start(r.taken_at.date()) < _week_start(anchor) else -1, 1)
    months = _newest_per_period(good, lambda r: (r.taken_at.year, r.taken_at.month),
                                lambda r: 0 if (r.taken_at.year, r.taken_at.month) < (anchor.year, anchor.month)
                                else -1, 1)
    for backup_id in weeks:
        out[backup_id].add("weekly")
    for backup_id in months:
        out[backup_id].add("monthly")
    return out


def _plan_group_tiers(group: str, items: list[BackupRecord], policy: TierPolicy, source: str,
                      offsite: bool) -> list[Decision]:
    newest = items[0]
    if newest.status == "failed":
        why = f"the newest backup of {group} ({newest.backup_id}) failed its last verification: removing nothing"
        return [Decision(r.backup_id, group, True, why, "daily") for r in items]
    anchor = newest.taken_at.date()
    members = tier_membership(items)
    keep = _Keep()
    keep.add(newest.backup_id, "newest backup")
    verified = next((r for r in items if r.status == "verified"), None)
    if verified is not None:
        keep.add(verified.backup_id, "newest verified backup")
    good = [r for r in items if r.good]
    failed = [r for r in items if not r.good]
    for r in (good + failed)[:max(policy.min_count, 0)]:
        keep.add(r.backup_id, f"one of the newest {policy.min_count}")
    tier_now: dict[str, str] = {}
    for r in items:
        age = (anchor - r.taken_at.date()).days
        holding = [t for t in policy.tiers()
                   if t.name in members[r.backup_id] and age < policy.window(t, source, offsite)]
        if holding:
            shortest = min(holding, key=lambda t: policy.window(t, source, offsite))
            tier_now[r.backup_id] = shortest.name
            keep.add(r.backup_id, f"{shortest.name}: {age} of {policy.window(shortest, source, offsite)} days")
        else:
            # Kept by a safety rule only: it stays in the class of its highest tier.
            tier_now[r.backup_id] = max(members[r.backup_id], key=TIERS.index)
    decisions = []
    for r in items:
        reasons = keep.reasons.get(r.backup_id)
        tier = tier_now[r.backup_id]
        if reasons:
            decisions.append(Decision(r.backup_id, group, True, "; ".join(reasons), tier))
        else:
            tiers = "/".join(t for t in TIERS if t in members[r.backup_id])
            decisions.append(Decision(r.backup_id, group, False, f"{tiers}: past its window in {source}", tier))
    return decisions


def plan_tiers(records: Iterable[BackupRecord], policy: TierPolicy, source: str, now: datetime | None = None,
               protect: Iterable[str] = (), offsite: bool = True) -> list[Decision]:
    """`plan` for a tiered policy in one place ('local' or 's3'): the same safety rules (the
    newest, the newest verified, the minimum, nothing while the newest failed or is dated in the
    future), and each decision names the tier whose window holds the backup now."""
    floor = RetentionPolicy(min_count=policy.min_count)
    decisions = _plan(list(records), floor, now,
                      lambda g, items: _plan_group_tiers(g, items, policy, source, offsite))
    keep = set(protect)
    return [Decision(d.backup_id, d.group, True, "made by this run", d.tier or "daily")
            if d.backup_id in keep and not d.keep else d for d in decisions]

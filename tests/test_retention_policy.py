"""The retention policy alone: invariants over random histories, and one year of dailies."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from pgkeeper.names import new_backup_id
from pgkeeper.retention import BackupRecord, RetentionPolicy, plan, to_remove

START = datetime(2023, 1, 1, tzinfo=UTC)
OUTCOMES = ["unverified", "checked", "verified", "failed", "incomplete"]


def record(at: datetime, outcome: str = "checked", group: str = "logical/crm") -> BackupRecord:
    complete = outcome != "incomplete"
    return BackupRecord(backup_id=new_backup_id(at), taken_at=at, complete=complete,
                        status=outcome if complete else "unverified", group=group if complete else "")


@st.composite
def histories(draw):
    minutes = draw(st.lists(st.integers(0, 200 * 24 * 60), min_size=0, max_size=60, unique=True))
    out = []
    for m in minutes:
        outcome = draw(st.sampled_from(OUTCOMES))
        group = draw(st.sampled_from(["logical/crm", "logical/sales", "physical/crm"]))
        out.append(record(START + timedelta(minutes=m), outcome, group))
    return out


policies = st.builds(RetentionPolicy, daily_days=st.integers(0, 40), weekly_weeks=st.integers(0, 10),
                     monthly_months=st.integers(0, 8), min_count=st.integers(0, 6))


def by_group(records):
    groups: dict[str, list[BackupRecord]] = {}
    for r in sorted(records, key=lambda r: r.taken_at, reverse=True):
        if r.complete:
            groups.setdefault(r.group, []).append(r)
    return groups


@settings(max_examples=400, deadline=None)
@given(histories(), policies)
def test_every_invariant_holds_on_random_histories(records, policy):
    decisions = plan(records, policy)
    decided = [d.backup_id for d in decisions]
    complete_ids = {r.backup_id for r in records if r.complete}
    # Only complete backups are decided, each exactly once, each with a reason.
    assert sorted(decided) == sorted(complete_ids)
    assert all(d.reason.strip() for d in decisions)
    removed = set(to_remove(decisions))
    kept = complete_ids - removed

    newest = max(records, key=lambda r: r.taken_at, default=None)
    if newest is not None and not newest.complete:
        assert removed == set(), "the newest backup failed: nothing may go"

    for group, items in by_group(records).items():
        group_removed = {r.backup_id for r in items} & removed
        group_kept = {r.backup_id for r in items} & kept
        if items[0].status == "failed":
            assert not group_removed, f"{group}: newest failed, nothing may go"
        # Never below the minimum.
        assert len(group_kept) >= min(policy.min_count, len(items))
        # Never the newest verified, never the newest good one.
        verified = [r for r in items if r.status == "verified"]
        if verified:
            assert verified[0].backup_id in kept
        good = [r for r in items if r.good]
        if good:
            assert good[0].backup_id in kept
        # Every backup inside the daily window stays (the old scripts' RETENTION_DAYS).
        anchor = items[0].taken_at.date()
        for r in items:
            if (anchor - r.taken_at.date()).days < policy.daily_days:
                assert r.backup_id in kept, f"{r.backup_id}: inside the daily window"
        # Each of the last weekly_weeks weeks keeps its newest good backup.
        if items[0].good:
            monday = anchor - timedelta(days=anchor.weekday())
            for week in range(policy.weekly_weeks):
                start = monday - timedelta(weeks=week)
                in_week = [r for r in good if start <= r.taken_at.date() < start + timedelta(days=7)]
                if in_week:
                    assert in_week[0].backup_id in kept, f"{in_week[0].backup_id}: newest of week {start}"

    # Running retention again over what was kept removes nothing more (no cascade).
    survivors = [r for r in records if not r.complete or r.backup_id in kept]
    assert to_remove(plan(survivors, policy)) == []


def test_pre_restore_backups_follow_the_same_rules():
    now = datetime(2024, 3, 15, 2, tzinfo=UTC)
    records = [record(now - timedelta(days=d)) for d in range(0, 10)]
    old = BackupRecord(new_backup_id(now - timedelta(days=90, hours=1)), now - timedelta(days=90, hours=1),
                       True, "checked", "logical/crm", ("pre-restore",))
    decisions = {d.backup_id: d for d in plan(records + [old], RetentionPolicy(5, 0, 0, 2))}
    assert not decisions[old.backup_id].keep
    assert "outside every rule" in decisions[old.backup_id].reason


def test_a_failed_newest_verification_freezes_its_group_only():
    now = datetime(2024, 3, 15, 2, tzinfo=UTC)
    crm = [record(now - timedelta(days=d)) for d in range(1, 40)] + [record(now, "failed")]
    sales = [record(now - timedelta(days=d, hours=1), group="logical/sales") for d in range(0, 40)]
    decisions = plan(crm + sales, RetentionPolicy(7, 0, 0, 1))
    crm_removed = [d for d in decisions if d.group == "logical/crm" and not d.keep]
    sales_removed = [d for d in decisions if d.group == "logical/sales" and not d.keep]
    assert crm_removed == []
    assert len(sales_removed) == 33
    assert all("failed its last verification" in d.reason for d in decisions if d.group == "logical/crm")


def test_an_incomplete_newest_backup_freezes_everything():
    now = datetime(2024, 3, 15, 2, tzinfo=UTC)
    records = [record(now - timedelta(days=d)) for d in range(1, 60)] + [record(now, "incomplete")]
    decisions = plan(records, RetentionPolicy(7, 0, 0, 1))
    assert to_remove(decisions) == []
    assert all("incomplete" in d.reason for d in decisions)


def test_400_daily_backups_leave_exactly_the_gfs_set():
    newest = datetime(2024, 3, 15, 2, 0, 5, tzinfo=UTC)  # a Friday, in a leap year
    records = [record(newest - timedelta(days=d)) for d in range(400)]
    # One backup verified by a restore drill long ago; the newest verified must survive.
    drill = newest - timedelta(days=200)
    records = [record(r.taken_at, "verified") if r.taken_at == drill else r for r in records]
    decisions = plan(records, RetentionPolicy(daily_days=30, weekly_weeks=8, monthly_months=12, min_count=3))

    kept = sorted(d.backup_id for d in decisions if d.keep)
    expected_days = [date(2024, 2, 15) + timedelta(days=i) for i in range(30)]  # Feb 15 .. Mar 15
    expected_days += [date(2024, 2, 11), date(2024, 2, 4), date(2024, 1, 28)]  # Sundays of older weeks
    expected_days += [date(2024, 1, 31), date(2023, 12, 31), date(2023, 11, 30), date(2023, 10, 31),
                      date(2023, 9, 30), date(2023, 8, 31), date(2023, 7, 31), date(2023, 6, 30),
                      date(2023, 5, 31), date(2023, 4, 30)]  # month ends (Feb 29 is a daily)
    expected_days.append(drill.date())  # 2023-08-28, the newest verified backup
    expected = sorted(new_backup_id(datetime.combine(d, newest.timetz())) for d in expected_days)
    assert kept == expected
    assert len(kept) == 44
    assert len([d for d in decisions if not d.keep]) == 400 - 44
    by_id = {d.backup_id: d.reason for d in decisions}
    assert by_id[new_backup_id(datetime(2023, 12, 31, 2, 0, 5, tzinfo=UTC))] == "monthly: newest of 2023-12"
    assert "newest verified backup" in by_id[new_backup_id(drill)]
    assert "weekly: newest of 2024-W06" in by_id[new_backup_id(datetime(2024, 2, 11, 2, 0, 5, tzinfo=UTC))]


def test_several_backups_a_day_are_all_kept_inside_the_daily_window():
    newest = datetime(2024, 3, 15, 23, tzinfo=UTC)
    records = [record(newest - timedelta(hours=h)) for h in range(0, 24 * 10)]  # hourly, 10 days
    decisions = plan(records, RetentionPolicy(daily_days=3, weekly_weeks=0, monthly_months=0, min_count=1))
    kept = [d for d in decisions if d.keep]
    assert len(kept) == 72  # Mar 13, 14, 15: every hour
    assert all(d.reason.startswith("daily: within the last 3 days") or "newest" in d.reason for d in kept)

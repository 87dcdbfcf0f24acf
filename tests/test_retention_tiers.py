"""Retention tiers over a simulated year of daily backups (controlled clock, in-memory driver):
exactly the tiers' sets are kept in each place, each in its tier's class, and WAL retention never
removes a segment a kept base backup needs."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups
from pgkeeper.manifest import Manifest, StoredFile
from pgkeeper.names import new_backup_id
from pgkeeper.retention import BackupRecord, TierPolicy, plan_tiers
from pgkeeper.storage.memory import MemoryStorage
from pgkeeper.tasks.retention import retain
from pgkeeper.wal.naming import lsn_segment, segment_name
from pgkeeper.wal.retention import expendable, tiered_needs

START = datetime(2025, 1, 1, 2, 0, tzinfo=UTC)
DAYS = 400
SEG = 16 << 20


def lsn(n: int) -> str:
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"


def manifest(at: datetime, day: int) -> Manifest:
    # A base backup a day; 10 segments of WAL a day, the backup spanning 2 of them.
    start = (day * 10 + 3) * SEG
    return Manifest(backup_id=new_backup_id(at), kind="physical", database="crm", server_version="15",
                    tool_version="test", started_at=at, finished_at=at + timedelta(minutes=5), compression="zstd",
                    start_lsn=lsn(start), stop_lsn=lsn(start + 2 * SEG - 1), timeline=1, wal_segment_size=SEG,
                    size=1 << 30, files=[StoredFile(name="base.tar.zst", size=1 << 30, sha256="0" * 64)])


def add(storage: MemoryStorage, m: Manifest) -> None:
    storage.begin_backup(m.backup_id)
    with storage.write_file(m.backup_id, "base.tar.zst") as f:
        f.write(b"x")
    storage.finish_backup(m.backup_id, m.to_bytes())


def expected_s3(ids_at: dict[str, datetime], anchor: date) -> dict[str, str]:
    """The tiers' set, computed the plain way: backup id -> the tier whose window holds it."""
    by_week: dict[date, str] = {}
    by_month: dict[tuple[int, int], str] = {}
    for i, at in sorted(ids_at.items(), key=lambda x: x[1]):
        by_week[at.date() - timedelta(days=at.weekday())] = i
        by_month[(at.year, at.month)] = i
    this_week = anchor - timedelta(days=anchor.weekday())
    weeklies = {i for w, i in by_week.items() if w < this_week}
    monthlies = {i for m, i in by_month.items() if m < (anchor.year, anchor.month)}
    out = {}
    for i, at in ids_at.items():
        age = (anchor - at.date()).days
        if age < 30:
            out[i] = "daily"
        elif i in weeklies and age < 90:
            out[i] = "weekly"
        elif i in monthlies and age < 365:
            out[i] = "monthly"
    return out


def test_a_year_of_dailies_keeps_exactly_the_tiers_and_the_wal_they_need(tmp_path: Path) -> None:
    repo = BackupRepository(path=str(tmp_path / "repo"), retention_tiers=True, retention_min_count=3)
    local, s3 = MemoryStorage("local"), MemoryStorage("s3")
    every: dict[str, datetime] = {}
    manifests: dict[str, Manifest] = {}
    for day in range(DAYS):
        at = START + timedelta(days=day)
        m = manifest(at, day)
        every[m.backup_id] = at
        manifests[m.backup_id] = m
        add(local, m)
        add(s3, m)
        # The block names no bucket, so the local disk applies the bucket's windows too.
        retain(repo, local, "local", False, [m.backup_id], at)
        retain(repo, s3, "s3", False, [m.backup_id], at)
    anchor = (START + timedelta(days=DAYS - 1)).date()
    want = expected_s3(every, anchor)

    kept_s3 = {m.backup_id: m for m in list_backups(s3)}
    assert set(kept_s3) == set(want)
    assert {i: m.tier for i, m in kept_s3.items()} == want
    classes = {i: s3.archive_state(i).storage_class for i in kept_s3}
    assert {i: c for i, c in classes.items()} == {
        i: {"daily": "STANDARD", "weekly": "STANDARD_IA", "monthly": "GLACIER"}[t] for i, t in want.items()}
    assert sum(t == "monthly" for t in want.values()) >= 8 and sum(t == "weekly" for t in want.values()) >= 8
    assert not s3.archive_state(next(i for i, t in want.items() if t == "monthly")).readable

    # Without a bucket block the local disk keeps what the bucket would: the same set.
    assert {m.backup_id for m in list_backups(local)} == set(want)
    # With the bucket doing the long windows, the local disk keeps the dailies only.
    dailies = {i for i, t in want.items() if t == "daily"}
    d = plan_tiers([BackupRecord(i, every[i], True, "checked", "physical/crm") for i in sorted(every)[-60:]],
                   repo.tier_policy(), "local", offsite=True)
    assert {x.backup_id for x in d if x.keep} == dailies

    # WAL: everything over the daily window, and each older kept backup's own segments.
    kept = list(kept_s3.values())
    pitr_from = max(m.finished_at for m in kept) - timedelta(days=30)
    (cutoff, _), ranges = tiered_needs(kept, pitr_from)
    for m in kept:
        for seg in range(lsn_segment(m.start_lsn, SEG), lsn_segment(m.stop_lsn, SEG) + 1):
            assert not expendable(segment_name(1, seg, SEG), cutoff, SEG, ranges), (m.backup_id, seg)
    oldest_daily = min(every[i] for i in dailies)
    first_day = (oldest_daily - START).days
    assert cutoff == first_day * 10 + 3
    # Between two monthlies, the WAL no kept backup needs goes.
    assert expendable(segment_name(1, 200 * 10 + 7, SEG), cutoff, SEG, ranges)
    assert len(ranges) == len(kept) - len(dailies)


def test_classes_only_move_colder_and_the_manifest_stays_readable(tmp_path: Path) -> None:
    repo = BackupRepository(path=str(tmp_path / "repo"), retention_tiers=True, weekly_class="GLACIER_IR",
                            monthly_class="DEEP_ARCHIVE")
    s3 = MemoryStorage("s3")
    for day in range(120):
        add(s3, manifest(START + timedelta(days=day), day))
    now = START + timedelta(days=119)
    report, _, _ = retain(repo, s3, "s3", False, [], now)
    assert set(report.moved.values()) == {"GLACIER_IR", "DEEP_ARCHIVE"}
    # Listing never needs a restore request: the manifests say tier and class.
    tiers = {m.backup_id: (m.tier, m.storage_class) for m in list_backups(s3)}
    assert ("monthly", "DEEP_ARCHIVE") in tiers.values() and ("weekly", "GLACIER_IR") in tiers.values()
    # A second run on the same day moves nothing again.
    again, _, _ = retain(repo, s3, "s3", False, [], now)
    assert again.moved == {} and again.removed == []
    # What was done is recorded for the weekly report.
    assert len(s3.read_records("retention")) == 1


def test_tier_variables_default_to_the_old_scripts_policy() -> None:
    from pgkeeper.errors import SetupError
    from pgkeeper.settings import tier_settings

    assert tier_settings({}) == {}
    fields = tier_settings({"RETENTION_TIERS": "on"})
    policy = BackupRepository(**fields).tier_policy()
    assert policy == TierPolicy(min_count=3)
    assert (policy.daily.local_days, policy.weekly.s3_days, policy.monthly.s3_days,
            policy.monthly.s3_class) == (30, 90, 365, "GLACIER")
    assert BackupRepository(**tier_settings({"TIER_MONTHLY_CLASS": "deep_archive", "RETENTION_DAYS": "14"})
                            ).tier_policy().monthly.s3_class == "DEEP_ARCHIVE"
    assert tier_settings({"RETENTION_DAYS": "14", "RETENTION_TIERS": "1"})["daily_s3_days"] == 14
    with pytest.raises(SetupError, match="TIER_MONTHLY_CLASS"):
        tier_settings({"TIER_MONTHLY_CLASS": "COLD"})


def test_an_archived_backup_is_requested_then_waited_for_or_refused_in_one_line() -> None:
    from pgkeeper.errors import NotReadableYet
    from pgkeeper.tasks.archive import make_readable

    s3 = MemoryStorage("s3")
    m = manifest(START, 0)
    add(s3, m)
    s3.set_storage_class(m.backup_id, "DEEP_ARCHIVE")
    s3.restore_delay_s = 0.5
    with pytest.raises(NotReadableYet) as refused:
        make_readable(s3, m.backup_id, "Bulk")
    line = str(refused.value)
    assert "\n" not in line and "DEEP_ARCHIVE" in line and "come back after" in line
    assert s3.archive_state(m.backup_id).restoring  # the request stands
    # A later run finds the request under way and waits on it (short polls), without asking again.
    asked_at = s3.restore_ready_at[m.backup_id]
    state = make_readable(s3, m.backup_id, "Bulk", wait=True, poll_seconds=0.1, wait_timeout_seconds=5)
    assert state.readable and s3.restore_ready_at[m.backup_id] == asked_at
    assert s3.open_file(m.backup_id, "base.tar.zst").read() == b"x"

"""Comparing a backup with the previous verified one of the same database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgkeeper.anomaly import describe, find_anomalies, previous_verified
from pgkeeper.manifest import Manifest, StoredFile, Verification

T0 = datetime(2024, 3, 15, 14, 30, tzinfo=UTC)


def manifest(n: int, size: int = 1000, tables: dict[str, int] | None = None, database: str = "crm",
             verified: bool | None = True) -> Manifest:
    at = T0 + timedelta(days=n)
    checks = [] if verified is None else [Verification(at=at, method="restore", ok=verified, restore_seconds=1.0)]
    return Manifest(backup_id=at.strftime("backup_%Y%m%d_%H%M%S"), database=database, server_version="15",
                    tool_version="t", started_at=at, finished_at=at, compression="zstd", size=size,
                    files=[StoredFile(name="x.dump.zst", size=size, sha256="0" * 64)],
                    tables=tables if tables is not None else {"public.a": 100, "public.b": 10},
                    verifications=checks)


def test_emptied_table_is_named():
    found = find_anomalies(manifest(0), manifest(1, tables={"public.a": 0, "public.b": 10}))
    assert found == ["table public.a fell 100% (100 -> 0 rows)"]


def test_small_drops_and_growth_are_fine():
    assert find_anomalies(manifest(0), manifest(1, size=600, tables={"public.a": 51, "public.b": 500})) == []


def test_size_drop_and_vanished_table():
    found = find_anomalies(manifest(0, size=1000), manifest(1, size=400, tables={"public.a": 100}))
    assert found == ["backup size fell 60% (1000 -> 400 bytes)", "table public.b is gone (had 10 rows)"]


def test_threshold_is_configurable_and_checked():
    prev, cur = manifest(0), manifest(1, tables={"public.a": 75, "public.b": 10})
    assert find_anomalies(prev, cur, 0.5) == []
    assert find_anomalies(prev, cur, 0.2) == ["table public.a fell 25% (100 -> 75 rows)"]
    with pytest.raises(ValueError):
        find_anomalies(prev, cur, 1.5)


def test_previous_verified_skips_unverified_failed_newer_and_other_databases():
    older = manifest(0)
    failed = manifest(1, verified=False)
    unverified = manifest(2, verified=None)
    other_db = manifest(3, database="other")
    current = manifest(4)
    newer = manifest(5)
    backups = [older, failed, unverified, other_db, current, newer]
    assert previous_verified(backups, current) is older
    assert previous_verified(backups, older) is None
    assert describe(older, current, ["x"]).startswith(f"backup {current.backup_id} of crm shrank since verified "
                                                      f"backup {older.backup_id}: x")


@given(before=st.integers(min_value=0, max_value=10**9), after=st.integers(min_value=0, max_value=10**9),
       threshold=st.floats(min_value=0.01, max_value=0.99))
def test_a_table_is_flagged_exactly_when_it_fell_more_than_the_threshold(before, after, threshold):
    found = find_anomalies(manifest(0, tables={"t": before}), manifest(1, tables={"t": after}), threshold)
    assert bool(found) == (before > 0 and (before - after) / before > threshold)

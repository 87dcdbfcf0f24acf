"""A clock you don't have to trust: backup ids from a wrong clock are refused, and retention
never plans from a backup dated in the future nor removes the one its own run made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pgkeeper.clock import ClockSkew, first_backup_time
from pgkeeper.names import new_backup_id
from pgkeeper.retention import RetentionPolicy, plan, to_remove
from tests.test_retention_policy import record

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def test_a_backup_id_from_a_wrong_clock_is_refused() -> None:
    with pytest.raises(ClockSkew, match="database server's says 2026-11-30 02:00:00"):
        first_backup_time([], NOW + timedelta(days=365 * 4), reference=NOW)  # worker clock in 2030
    with pytest.raises(ClockSkew, match="database server's says"):
        first_backup_time([], datetime(2000, 1, 1, tzinfo=UTC), reference=NOW)
    future = new_backup_id(datetime(2030, 1, 1, tzinfo=UTC))
    with pytest.raises(ClockSkew, match=f"newest backup {future}"):
        first_backup_time([new_backup_id(NOW - timedelta(days=1)), future], NOW, reference=NOW)
    # A backup of the same second (or a few seconds ahead, within the skew) only moves the id on.
    assert first_backup_time([new_backup_id(NOW)], NOW, reference=NOW) == NOW + timedelta(seconds=1)
    assert first_backup_time([], NOW, reference=NOW + timedelta(seconds=30)) == NOW


def test_retention_keeps_everything_while_the_newest_backup_is_in_the_future() -> None:
    dailies = [record(NOW - timedelta(days=d)) for d in range(60)]
    policy = RetentionPolicy(daily_days=7, weekly_weeks=2, monthly_months=1, min_count=3)
    assert to_remove(plan(dailies, policy, now=NOW))  # a normal history loses its old dailies
    jumped = [*dailies, record(datetime(2030, 1, 1, tzinfo=UTC))]
    decisions = plan(jumped, policy, now=NOW)
    assert to_remove(decisions) == []
    assert all("dated after now" in d.reason for d in decisions)


def test_retention_never_removes_the_backup_its_own_run_made() -> None:
    history = [record(NOW - timedelta(days=d)) for d in range(10)]
    from_2000 = record(datetime(2000, 1, 1, tzinfo=UTC))
    policy = RetentionPolicy(daily_days=3, weekly_weeks=0, monthly_months=0, min_count=1)
    assert from_2000.backup_id in to_remove(plan([*history, from_2000], policy, now=NOW))
    decisions = plan([*history, from_2000], policy, now=NOW, protect=[from_2000.backup_id])
    assert from_2000.backup_id not in to_remove(decisions)
    assert {d.backup_id: d.reason for d in decisions}[from_2000.backup_id] == "made by this run"


def test_backup_is_refused_in_one_line_after_a_backup_from_the_future(conn, repo, tmp_path: Path) -> None:
    from pgkeeper.flows.backup import backup

    future = repo.local().backups_dir / new_backup_id(datetime(2030, 1, 1, tzinfo=UTC))
    future.mkdir(parents=True)
    (future / "manifest.json").write_text("{}")
    block = f"clock-repo-{tmp_path.name[-8:]}".lower().replace("_", "-")
    repo.save(block, overwrite=True)
    db_block = block + "-db"
    conn.save(db_block, overwrite=True)
    state = backup(connection_block=db_block, repository_block=block, return_state=True)
    assert state.is_failed()
    with pytest.raises(ClockSkew, match="newest backup backup_20300101_000000") as err:
        state.result()
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in repo.local().backups_dir.iterdir()) == [future.name]

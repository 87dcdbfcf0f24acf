"""The continuity walk alone: timelines, switch points, gaps and forks (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

from pgkeeper.wal.continuity import check
from pgkeeper.wal.naming import segment_name

T0 = datetime(2026, 11, 30, tzinfo=UTC)


def archived(tli: int, first: int, last: int, at: float = 1_000.0) -> dict[str, float]:
    return {segment_name(tli, n): at + n for n in range(first, last + 1)}


def test_a_walk_across_a_timeline_switch_follows_the_newest_timeline() -> None:
    # Timeline 2 branched from 1 inside segment 8 (at 0/8000A28); segment 8 of timeline 1 is a
    # .partial, and recovery reads segment 8 from timeline 2.
    names = {**archived(1, 2, 7), segment_name(1, 8) + ".partial": 9.0, **archived(2, 8, 12), "00000002.history": 1.0}
    report = check([("b1", "0/3000028", 1, T0)], names, {2: "1\t0/8000A28\tno recovery target specified\n"})
    b = report.backups[0]
    assert b.ok and b.target_timeline == 2 and report.forks == [] and report.newest_segment == segment_name(2, 12)
    assert [(w.timeline, w.first_segment, w.last_segment) for w in b.windows] == [
        (1, segment_name(1, 3), segment_name(1, 7)), (2, segment_name(2, 8), segment_name(2, 12))]
    assert b.windows[0].earliest == T0 and b.recoverable_to == datetime.fromtimestamp(1_012.0, UTC)


def test_a_gap_is_named_and_ends_the_window() -> None:
    names = archived(1, 3, 20)
    del names[segment_name(1, 9)]
    b = check([("b1", "0/3000028", 1, T0), ("b2", "0/A000028", 1, T0)], names, {}).backups
    assert not b[0].ok and b[0].missing == [segment_name(1, 9)] and b[0].windows[0].last_segment == segment_name(1, 8)
    assert b[1].ok  # a backup after the gap does not need the missing segment
    # A gap before the switch point on the old timeline.
    names = {**archived(1, 3, 5), **archived(2, 8, 9)}
    b = check([("b1", "0/3000028", 1, T0)], names, {2: "1\t0/8000A28\treason\n"}).backups[0]
    assert b.missing == [segment_name(1, 6), segment_name(1, 7)] and b.missing_count == 2


def test_forks_and_missing_histories_are_reported() -> None:
    names = {**archived(1, 1, 6), **archived(2, 5, 7), **archived(3, 5, 6), **archived(4, 9, 9)}
    histories = {2: "1\t0/5000000\ta\n", 3: "1\t0/5000000\tb\n"}
    report = check([("b1", "0/1000028", 1, T0)], names, histories)
    assert report.backups[0].target_timeline == 3  # recovery to latest takes the newest branch
    assert any("timeline 1 forks into 2, 3" in f for f in report.forks)
    assert any("timeline 4 has WAL but no 00000004.history" in f for f in report.forks)

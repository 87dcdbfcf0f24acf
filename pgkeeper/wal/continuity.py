"""Is the archive continuous? (WAL-G's wal-verify, pgBackRest's archive check, as one pure walk.)

For each base backup: start at the segment holding its start LSN, on its timeline, and follow
the timeline PostgreSQL's recovery_target_timeline='latest' would take (the newest timeline
whose history descends from the backup's), switching timelines where the history files say,
up to the newest archived segment of that last timeline. Every segment on the way must be in
the archive; the first missing one is a gap, and nothing after it is recoverable. The result
is each backup's recoverability window per timeline: consistent from the backup's end, up to
the archive time of the last segment reachable without a gap.

Forks (a timeline with several children, e.g. two recoveries from one point) are reported:
recovery to 'latest' follows only the newest, and the other branch is then unreachable.

Pure: callers list the archive (spool, ledger, S3) and read the history files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pgkeeper.wal.naming import DEFAULT_SEGMENT_SIZE, lsn_segment, parse_lsn, segment_name

MAX_LISTED = 10  # missing segments named per backup; the count says the rest


@dataclass
class TimelineWindow:
    timeline: int
    first_segment: str
    last_segment: str | None  # None: nothing of this timeline reachable
    earliest: datetime | None
    latest: datetime | None  # archive time of last_segment: the newest recoverable point is at or before it

    def describe(self) -> str:
        def t(x: datetime | None) -> str:
            return x.strftime("%Y-%m-%d %H:%M:%S") if x else "?"
        return f"timeline {self.timeline}: {t(self.earliest)} .. {t(self.latest)} UTC"


@dataclass
class BackupContinuity:
    backup_id: str
    start_segment: str
    target_timeline: int
    windows: list[TimelineWindow] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    missing_count: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing_count

    @property
    def recoverable_to(self) -> datetime | None:
        latest = [w.latest for w in self.windows if w.latest]
        return max(latest) if latest else None

    def describe(self) -> str:
        windows = "; ".join(w.describe() for w in self.windows if w.last_segment) or "no WAL archived yet"
        if self.ok:
            return f"{self.backup_id}: recoverable {windows}"
        more = f" and {self.missing_count - len(self.missing)} more" if self.missing_count > len(self.missing) else ""
        return (f"{self.backup_id}: GAP, segment {self.missing[0]} is missing"
                f"{' (also ' + ', '.join(self.missing[1:]) + more + ')' if len(self.missing) > 1 or more else ''}; "
                f"recoverable only {windows}")


@dataclass
class ContinuityReport:
    backups: list[BackupContinuity]
    forks: list[str]
    newest_segment: str | None

    @property
    def gaps(self) -> list[str]:
        return sorted({s for b in self.backups for s in b.missing})

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.backups)


def parse_history(text: str) -> list[tuple[int, int]]:
    """(parent timeline, switch point LSN) per line of a timeline history file, oldest first."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and parts[0].isdigit() and "/" in parts[1]:
            out.append((int(parts[0]), parse_lsn(parts[1])))
    return out


def _when(at: float | Path | None) -> datetime | None:
    """An archive time: epoch seconds, or a local file whose mtime it is (read only when needed)."""
    if isinstance(at, Path):
        try:
            at = at.stat().st_mtime
        except FileNotFoundError:  # shipped away meanwhile: its ledger entry has the same mtime
            return None
    return datetime.fromtimestamp(at, UTC) if at is not None else None


def check(backups: list[tuple[str, str, int, datetime]], archived: Mapping[str, float | Path],
          histories: dict[int, str], segment_size: int = DEFAULT_SEGMENT_SIZE) -> ContinuityReport:
    """`backups`: (backup id, start LSN, timeline, consistent-from time); `archived`: WAL file
    name -> archive time (epoch seconds, or a file with that mtime); `histories`: timeline ->
    its history file's text."""
    per_log = 0x100000000 // segment_size
    have: dict[int, dict[int, float | Path]] = {}  # timeline -> segno -> archive time
    for name, at in archived.items():
        if len(name) == 24:  # whole segments only: .partial/.backup/.history are not replayed as such
            have.setdefault(int(name[:8], 16), {})[int(name[8:16], 16) * per_log + int(name[16:24], 16)] = at
    parsed = {tli: parse_history(text) for tli, text in histories.items()}

    children: dict[int, list[int]] = {}
    for tli, entries in parsed.items():
        if entries:
            children.setdefault(entries[-1][0], []).append(tli)
    forks = [f"timeline {parent} forks into {', '.join(str(c) for c in sorted(kids))}"
             f" (recovery to latest follows {max(kids)})"
             for parent, kids in sorted(children.items()) if len(kids) > 1]
    for tli in sorted(have):
        if tli > 1 and tli not in parsed:
            forks.append(f"timeline {tli} has WAL but no {tli:08X}.history in the archive")

    newest = None
    if have:
        top = max(have)
        newest = segment_name(top, max(have[top]), segment_size)

    results = []
    for backup_id, start_lsn, timeline, consistent_at in backups:
        start = lsn_segment(start_lsn, segment_size)
        # The newest timeline descending from the backup's: what recovery to 'latest' replays.
        descendants = [t for t, entries in parsed.items() if any(p == timeline for p, _ in entries)]
        target = max([timeline, *descendants])
        path: list[tuple[int, int | None]] = []
        if target != timeline:
            entries = parsed[target]
            idx = next(i for i, (p, _) in enumerate(entries) if p == timeline)
            path = [(p, sw) for p, sw in entries[idx:]]
        path.append((target, None))
        result = BackupContinuity(backup_id, segment_name(timeline, start, segment_size), target)
        cur, broken = start, False
        for i, (tli, switch) in enumerate(path):
            segs = have.get(tli, {})
            last = (switch // segment_size - 1) if switch is not None else max(segs, default=cur - 1)
            window = TimelineWindow(tli, segment_name(tli, cur, segment_size), None,
                                    consistent_at if i == 0 else _when(segs.get(cur)), None)
            for segno in range(cur, last + 1):
                if segno in segs:
                    if not broken:
                        window.last_segment = segment_name(tli, segno, segment_size)
                        window.latest = _when(segs[segno])
                    continue
                broken = True
                result.missing_count += 1
                if len(result.missing) < MAX_LISTED:
                    result.missing.append(segment_name(tli, segno, segment_size))
            if window.last_segment is None:
                window.earliest = None
            result.windows.append(window)
            if switch is not None:
                cur = switch // segment_size  # the new timeline holds the segment with the switch point
        results.append(result)
    return ContinuityReport(results, forks, newest)


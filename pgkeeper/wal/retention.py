"""WAL retention: remove archived WAL that no kept base backup can use.

A base backup starting in segment S needs segments S, S+1, ... (on its timeline and on any
later timeline it may be recovered along), never one before S. So every segment numbered
below the oldest kept base backup's start segment is removed, whatever its timeline;
timeline history files are always kept (they are tiny and recovery reads them to choose a
timeline). With no kept base backup nothing is removed: WAL alone restores nothing, but
deleting it is not ours to decide then.

The cutoff is computed over the base backups kept in *every* source, and applied to the
local spool and to S3 alike: the spool may hold WAL not yet shipped that an older base
backup in the bucket still needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pgkeeper.wal.naming import DEFAULT_SEGMENT_SIZE, lsn_segment, segment_name, segment_position
from pgkeeper.wal.spool import LocalWalStore


@dataclass
class WalExpiry:
    keep_from: str | None  # first segment kept (timeline of the oldest kept base backup)
    removed_local: list[str] = field(default_factory=list)
    removed_s3: list[str] = field(default_factory=list)
    dry_run: bool = False

    def summary(self) -> str:
        if self.keep_from is None:
            return "no base backup kept: WAL kept"
        verb = "would remove" if self.dry_run else "removed"
        return (f"WAL before {self.keep_from}: {verb} {len(self.removed_local)} local and "
                f"{len(self.removed_s3)} S3 file(s)")


def cutoff_segment(kept_physical: Iterable[Any]) -> tuple[int, str] | None:
    """(segment number, name) of the oldest start among kept physical base backups."""
    best: tuple[int, str] | None = None
    for m in kept_physical:
        if getattr(m, "kind", None) != "physical" or not m.start_lsn:
            continue
        size = m.wal_segment_size or DEFAULT_SEGMENT_SIZE
        segno = lsn_segment(m.start_lsn, size)
        if best is None or segno < best[0]:
            best = (segno, segment_name(m.timeline or 1, segno, size))
    return best


def expendable(name: str, cutoff: int, segment_size: int = DEFAULT_SEGMENT_SIZE,
               ranges: Iterable[tuple[int, int]] = ()) -> bool:
    """Below the cutoff and inside no kept range (a base backup's own start..stop segments)."""
    pos = segment_position(name, segment_size)
    if pos is None:  # history files have no position: never expendable
        return False
    return pos[1] < cutoff and not any(lo <= pos[1] <= hi for lo, hi in ranges)


def tiered_needs(kept_physical: Iterable[Any], pitr_from: datetime) -> tuple[tuple[int, str] | None,
                                                                              list[tuple[int, int]]]:
    """With retention tiers, WAL follows them: every segment from the oldest base backup finished
    since `pitr_from` (point-in-time recovery over that window), and for each older kept base
    backup (a weekly, a monthly) only the segments from its start to its stop, which make it
    consistent. One without a stop position keeps everything from its start (the safe side)."""
    recent, ranges = [], []
    for m in kept_physical:
        if getattr(m, "kind", None) != "physical" or not m.start_lsn:
            continue
        size = m.wal_segment_size or DEFAULT_SEGMENT_SIZE
        if m.finished_at >= pitr_from or not m.stop_lsn:
            recent.append(m)
        else:
            ranges.append((lsn_segment(m.start_lsn, size), lsn_segment(m.stop_lsn, size)))
    return cutoff_segment(recent), ranges


def expire_wal(repo: Any, kept_physical_manifests: list[Any], dry_run: bool = False,
               pitr_from: datetime | None = None) -> WalExpiry:
    """Remove WAL older than the oldest kept base backup's start from the spool and the bucket;
    with `pitr_from` (retention tiers), older kept base backups keep only their own segments.

    `repo` is a BackupRepository (its path's wal/ spool and its offsite bucket)."""
    from pgkeeper.wal.setup import config_from_repository

    ranges: list[tuple[int, int]] = []
    if pitr_from is None:
        found = cutoff_segment(kept_physical_manifests)
    else:
        found, ranges = tiered_needs(kept_physical_manifests, pitr_from)
    if found is None:
        return WalExpiry(keep_from=None, dry_run=dry_run)
    cutoff, keep_from = found
    sizes = {m.wal_segment_size for m in kept_physical_manifests if getattr(m, "wal_segment_size", None)}
    size = sizes.pop() if len(sizes) == 1 else DEFAULT_SEGMENT_SIZE
    result = WalExpiry(keep_from=keep_from, dry_run=dry_run)
    cfg = config_from_repository(repo)
    local = LocalWalStore(cfg.spool)
    for obj in list(local.objects()):
        if expendable(obj.name, cutoff, size, ranges):
            result.removed_local.append(obj.name)
            if not dry_run:
                local.remove(obj)
    if not dry_run:
        for name, _sha, entry in list(local.ledger()):  # shipped-WAL ledger entries go with their WAL
            if expendable(name, cutoff, size, ranges):
                entry.unlink(missing_ok=True)
    if cfg.s3 is not None:
        from pgkeeper.wal.s3 import S3WalStore

        remote = S3WalStore(cfg.s3)
        doomed = [(name, rel) for name, _sha, rel in remote.objects() if expendable(name, cutoff, size, ranges)]
        result.removed_s3 = [name for name, _ in doomed]
        if doomed and not dry_run:
            remote.delete([rel for _, rel in doomed])
    return result

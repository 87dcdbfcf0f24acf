"""The WAL archive as one thing to ask: the local spool first, then S3 (boto3, no Prefect)."""

from __future__ import annotations

from pgkeeper.wal.config import WalConfig
from pgkeeper.wal.naming import DEFAULT_SEGMENT_SIZE, lsn_segment, parse_lsn, segment_name
from pgkeeper.wal.spool import LocalWalStore


class WalArchive:
    def __init__(self, cfg: WalConfig) -> None:
        self.cfg = cfg
        self.local = LocalWalStore(cfg.spool, identities=cfg.identities)
        self._s3 = None

    @property
    def s3(self):  # -> S3WalStore | None
        if self._s3 is None and self.cfg.s3 is not None:
            from pgkeeper.wal.s3 import S3WalStore

            self._s3 = S3WalStore(self.cfg.s3)
        return self._s3

    def describe(self) -> str:
        where = [self.local.describe()]
        if self.cfg.s3 is not None:
            where.append(self.cfg.s3.describe_wal())
        return " + ".join(where)

    def has(self, name: str) -> bool:
        if self.local.find(name):
            return True
        return bool(self.s3 is not None and self.s3.find(name))

    def fetch(self, name: str) -> bytes | None:
        from pgkeeper.wal.fetch import fetch

        return fetch(self.cfg, name)


def segments_between(start_lsn: str, stop_lsn: str, timeline: int,
                     segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[str]:
    """Names of the segments holding WAL from start_lsn up to (not including) stop_lsn."""
    first = lsn_segment(start_lsn, segment_size)
    last = (parse_lsn(stop_lsn) - 1) // segment_size if parse_lsn(stop_lsn) > parse_lsn(start_lsn) else first
    return [segment_name(timeline, n, segment_size) for n in range(first, last + 1)]

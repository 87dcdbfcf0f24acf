"""`pgkeeper wal-push [--config F | --repo DIR | --spool DIR] %p`: PostgreSQL's archive_command.

Imports neither Prefect nor boto3 (a test holds us to it): PostgreSQL calls this once per
16 MB segment, serially, and every millisecond here is archive lag. The segment is zstd-
compressed into the local spool atomically; the wal-ship flow moves it on to S3 later.
Exit 0 means "safely archived" (also for an identical duplicate); anything else makes
PostgreSQL keep the segment and try again, so a differing duplicate (in the spool, or already
shipped: see the ledger in wal/spool.py) and a segment of another cluster (its page header's
system identifier, see wal/identity.py) exit 1 loudly.
With a backlog, one call also archives the next ready files and leaves a child archiving the
ones after them (wal/ahead.py); their own calls then return after a marker check, before
compression code is even imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pgkeeper.errors import PgkeeperError
from pgkeeper.wal import ahead, config
from pgkeeper.wal.naming import check_wal_name, is_wal_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms a WAL command)
if TYPE_CHECKING:
    import argparse


def add_location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"WAL config file (default ${config.ENV_CONFIG} or {config.DEFAULT_CONFIG})")
    p.add_argument("--repo", help="local repository directory: WAL goes to DIR/wal")
    p.add_argument("--spool", help="local WAL spool directory (overrides --repo)")


_LOCATION_FLAGS = ("--config", "--repo", "--spool")


def quick_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """The archiver's own call (`[--config F | --repo D | --spool D]... %p`) parsed without
    argparse, whose import alone costs ~4 ms a segment; anything else goes to argparse."""
    from types import SimpleNamespace

    values: dict[str, str | None] = {"config": None, "repo": None, "spool": None}
    rest = list(argv)
    while len(rest) >= 3 and rest[0] in _LOCATION_FLAGS:
        values[rest[0][2:]] = rest[1]
        rest = rest[2:]
    if len(rest) != 1 or rest[0].startswith("-"):
        return None
    return SimpleNamespace(wal_path=rest[0], **values)  # type: ignore[return-value]


def main(argv: Sequence[str]) -> int:
    args = quick_args(argv) or parse_args(argv)
    return push(args)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    import argparse

    p = argparse.ArgumentParser(prog="pgkeeper wal-push",
                                description="Archive one WAL file (use as archive_command with %%p).")
    add_location_args(p)
    p.add_argument("wal_path", help="path of the WAL file (%%p)")
    return p.parse_args(list(argv))


def push(args: argparse.Namespace) -> int:
    name = os.path.basename(args.wal_path)
    try:
        # Before reading it: a config rewritten meanwhile must not vouch for what this call does.
        stamp = "" if args.spool or args.repo else ahead.config_stamp(args.config)
        cfg = config.load(args.config, spool=args.spool, repo=args.repo)
        check_wal_name(name)
        if ahead.claim(cfg.spool, name, args.wal_path):
            return 0
        archive_with_backlog(cfg, name, args.wal_path, stamp)
    except PgkeeperError as exc:  # a bad WAL name (BadWalName) too
        print(f"pgkeeper wal-push: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"pgkeeper wal-push: error: cannot archive {name}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    return 0


def archive_with_backlog(cfg: config.WalConfig, name: str, wal_path: str, stamp: str = "") -> None:
    """Archive `wal_path`, plus up to cfg.push_ahead files PostgreSQL has queued after it."""
    from pgkeeper.wal.identity import SegmentChecker
    from pgkeeper.wal.spool import LocalWalStore  # zstandard and hashlib: only when there is work

    store = LocalWalStore(cfg.spool, cfg.recipients)
    same_cluster = SegmentChecker(cfg.spool)  # 40 bytes of the first page, before anything is stored

    def push_one(n: str, p: str) -> object:
        same_cluster(n, p)
        return store.put_file(n, p, cfg.compression_level)

    extras = ahead.ready_files(wal_path, cfg.spool, cfg.push_ahead, is_wal_name)
    workers = min(4, os.cpu_count() or 1)
    ahead.push_all(push_one, (name, wal_path), extras, cfg.spool, workers=workers, stamp=stamp)
    if extras:  # a backlog: a child keeps pushing ahead while the archiver confirms these
        ahead.continue_in_background(push_one, wal_path, cfg.spool, cfg.push_ahead, is_wal_name,
                                     workers=min(2, workers), stamp=stamp)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

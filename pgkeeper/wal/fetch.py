"""`pgkeeper wal-fetch [--config F | --repo DIR] %f %p`: PostgreSQL's restore_command.

Looks in the local spool first, then in S3 (boto3 only, no Prefect), checks the sha256 the
object is named with, and writes the file atomically. Exit codes follow PostgreSQL 15, which
reads any plain non-zero status as "no such file" (and so ends recovery there, promoting a
copy missing data with --latest), but aborts recovery when the command exits above 125:
  0    the file was restored;
  1    confirmed absent from every place it could be: the spool, and S3 when configured
       (quietly: PostgreSQL asks for files past the end of WAL and for timeline histories
       that never existed);
  255  anything else: a bad or unreadable config, bad arguments, permissions, S3 unreachable,
       a copy that fails its checksum everywhere, any unexpected exception. Recovery stops
       and can be retried once the cause is fixed; it never ends early.
A spool copy that is corrupt or unreadable is reported and the S3 copy is used instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pgkeeper.errors import IntegrityError, PgkeeperError
from pgkeeper.wal import config
from pgkeeper.wal.naming import check_wal_name
from pgkeeper.wal.push import add_location_args, quick_args

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms a WAL command)
if TYPE_CHECKING:
    import argparse

RESTORED, MISSING, ABORT = 0, 1, 255


def _say(message: str) -> None:
    print(f"pgkeeper wal-fetch: {message}", file=sys.stderr)


class Fetcher:
    """Reads archived files: the spool first, then S3; each store is opened once (the
    prefetcher fetches many files through one)."""

    def __init__(self, cfg: config.WalConfig) -> None:
        from pgkeeper.wal.spool import LocalWalStore  # zstandard: not on the queue's path

        self.cfg = cfg
        self.local = LocalWalStore(cfg.spool, identities=cfg.identities)
        self._remote = None

    def remote(self):  # noqa: ANN201 - S3WalStore, imported lazily (boto3)
        if self._remote is None:
            from pgkeeper.wal.s3 import S3WalStore

            self._remote = S3WalStore(self.cfg.s3)
        return self._remote

    def fetch(self, name: str) -> tuple[bytes, str] | None:
        """(raw WAL file, its sha256), checksum-checked, or None if it is in no place it could be."""
        from pgkeeper.wal.spool import decompress_checked

        cfg, local = self.cfg, self.local
        copies = local.find(name)
        if len(copies) > 1:
            raise IntegrityError(f"{name} is archived twice with different content in {local.describe()}")
        spool_problem = None
        if copies:
            try:
                return local.read(copies[0]), copies[0].sha256
            except (IntegrityError, OSError) as exc:
                # The S3 copy (if shipped) was checked by S3 on arrival: use it rather than stop.
                spool_problem = str(exc) if isinstance(exc, IntegrityError) else \
                    f"cannot read {copies[0].path}: {exc.strerror or exc}"
                if cfg.s3 is None:
                    raise IntegrityError(spool_problem) from None
                _say(f"warning: {spool_problem}; trying {cfg.s3.describe_wal()}")
        if cfg.s3 is None:
            return None
        remote = self.remote()
        found = remote.find(name)
        if len(found) > 1:
            raise IntegrityError(f"{name} is archived twice with different content in {remote.describe()}")
        if not found:
            if spool_problem:  # it exists, only not in a usable copy: never "not found"
                raise IntegrityError(f"{spool_problem}, and {remote.describe()} has no copy")
            return None
        sha, rel = found[0]
        return decompress_checked(remote.get(rel), name, sha, cfg.identities), sha


def fetch(cfg: config.WalConfig, name: str) -> bytes | None:
    """The raw WAL file `name`, checksum-checked, or None if it is in no place it could be."""
    got = Fetcher(cfg).fetch(name)
    return got[0] if got else None


def main(argv: Sequence[str]) -> int:
    try:
        return _main(argv)
    except SystemExit as exc:  # --help exits 0; our parser's errors carry ABORT
        return exc.code if isinstance(exc.code, int) else ABORT
    except BaseException as exc:  # noqa: BLE001 - never let an unexpected error read as "not found"
        from pgkeeper.fmt import first_line

        _say(f"error: unexpected {type(exc).__name__}: {first_line(exc)} (recovery stops here; fix and restart)")
        return ABORT


def _location(args: argparse.Namespace) -> list[str]:
    """The location flags of this call, for the prefetcher it may start."""
    return [a for k in ("config", "repo", "spool") if getattr(args, k) for a in (f"--{k}", getattr(args, k))]


def _quick_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """PostgreSQL's own call (`[--config F | ...] %f %p`) without argparse (~4 ms a segment)."""
    argv = list(argv)
    if len(argv) < 2 or argv[-2].startswith("-") or argv[-1].startswith("-"):
        return None
    args = quick_args([*argv[:-2], "x"])
    if args is None:
        return None
    args.wal_name, args.dest = argv[-2], argv[-1]
    del args.wal_path
    return args


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            # argparse exits 2, which PostgreSQL would read as "not found": a typo in
            # restore_command must stop recovery instead.
            _say(f"error: {message}")
            raise SystemExit(ABORT)

    p = _Parser(prog="pgkeeper wal-fetch",
                description="Restore one archived WAL file (restore_command with %%f %%p).")
    add_location_args(p)
    p.add_argument("wal_name", help="WAL file name (%%f)")
    p.add_argument("dest", help="where to write it (%%p)")
    return p.parse_args(list(argv))


def start_prefetcher(argv: Sequence[str]) -> int:
    """`wal-fetch [--config F | ...] --prefetch-after SEGMENT SEGMENT_SIZE`: start the prefetcher
    (if none runs) at the segment after SEGMENT, before PostgreSQL asks for it: pitr runs this as
    the server user just before it starts the server, so replay finds its first segments queued."""
    from pgkeeper.wal import prefetch

    location, (after, size) = list(argv[:-3]), argv[-2:]
    args = quick_args([*location, "x"])
    if args is None or not prefetch.is_plain_segment(after) or not size.isdigit():
        _say("error: usage: wal-fetch [--config F | --repo D | --spool D] --prefetch-after SEGMENT SEGMENT_SIZE")
        return ABORT
    try:
        cfg = config.load(args.config, spool=args.spool, repo=args.repo)
        if not cfg.fetch_queue or cfg.fetch_ahead <= 0:
            return RESTORED
        queue = prefetch.Queue(cfg.fetch_queue, cfg.fetch_ahead)
        if not queue.exists():
            os.mkdir(queue.path, 0o700)  # never its parents: gone means recovery is over
        if not queue.prefetcher_alive():
            prefetch.start(location, after, int(size))
    except PgkeeperError as exc:
        _say(f"error: {exc}")
        return ABORT
    except OSError as exc:
        _say(f"error: cannot start fetching ahead: {exc.strerror or exc}")
        return ABORT
    return RESTORED


def _main(argv: Sequence[str]) -> int:
    if len(argv) >= 3 and argv[-3] == "--prefetch-after":
        return start_prefetcher(argv)
    args = _quick_args(argv) or _parse_args(argv)
    try:
        cfg = config.load(args.config, spool=args.spool, repo=args.repo)
        name = check_wal_name(args.wal_name)
        queue = None
        if cfg.fetch_queue and cfg.fetch_ahead > 0:
            from pgkeeper.wal import prefetch

            queue = prefetch.Queue(cfg.fetch_queue, cfg.fetch_ahead)
            if prefetch.is_plain_segment(name):
                size = queue.take(name, args.dest, _say)
                if size is not None:
                    _keep_fetching(queue, name, size, _location(args), had_to_fetch=False)
                    return RESTORED
        got = Fetcher(cfg).fetch(name)
        if got is None:
            return MISSING
        from pathlib import Path

        from pgkeeper.storage.atomic import atomic_write_bytes

        atomic_write_bytes(Path(args.dest), got[0])
        if queue is not None:
            _keep_fetching(queue, name, len(got[0]), _location(args), had_to_fetch=True)
    except PgkeeperError as exc:  # a bad WAL name (BadWalName) too
        _say(f"error: {exc}")
        return ABORT
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        _say(f"error: cannot restore {args.wal_name}: {exc.strerror or exc}{where}")
        return ABORT
    return RESTORED


def _keep_fetching(queue, name: str, size: int, location: list[str],  # noqa: ANN001 - prefetch.Queue
                   had_to_fetch: bool) -> None:
    """Start or steer the prefetcher after `name` was restored. Prefetching is an optimisation:
    the segment is restored whatever happens here."""
    try:
        if not queue.exists():
            os.mkdir(queue.path, 0o700)  # never its parents: gone means recovery is over
        queue.after_fetch(name, size, location, had_to_fetch)
    except OSError as exc:
        _say(f"warning: not fetching ahead ({queue.path}): {exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

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

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pgkeeper.errors import IntegrityError, PgkeeperError
from pgkeeper.storage.atomic import atomic_write_bytes
from pgkeeper.wal import config
from pgkeeper.wal.naming import BadWalName, check_wal_name
from pgkeeper.wal.push import add_location_args
from pgkeeper.wal.spool import LocalWalStore, decompress_checked

RESTORED, MISSING, ABORT = 0, 1, 255


def _say(message: str) -> None:
    print(f"pgkeeper wal-fetch: {message}", file=sys.stderr)


def fetch(cfg: config.WalConfig, name: str) -> bytes | None:
    """The raw WAL file `name`, checksum-checked, or None if it is in no place it could be."""
    local = LocalWalStore(cfg.spool, identities=cfg.identities)
    copies = local.find(name)
    if len(copies) > 1:
        raise IntegrityError(f"{name} is archived twice with different content in {local.describe()}")
    spool_problem = None
    if copies:
        try:
            return local.read(copies[0])
        except (IntegrityError, OSError) as exc:
            # The S3 copy (if shipped) was checked by S3 on arrival: use it rather than stop.
            spool_problem = str(exc) if isinstance(exc, IntegrityError) else \
                f"cannot read {copies[0].path}: {exc.strerror or exc}"
            if cfg.s3 is None:
                raise IntegrityError(spool_problem) from None
            _say(f"warning: {spool_problem}; trying {cfg.s3.describe_wal()}")
    if cfg.s3 is None:
        return None
    from pgkeeper.wal.s3 import S3WalStore

    remote = S3WalStore(cfg.s3)
    found = remote.find(name)
    if len(found) > 1:
        raise IntegrityError(f"{name} is archived twice with different content in {remote.describe()}")
    if not found:
        if spool_problem:  # it exists, only not in a usable copy: never "not found"
            raise IntegrityError(f"{spool_problem}, and {remote.describe()} has no copy")
        return None
    sha, rel = found[0]
    return decompress_checked(remote.get(rel), name, sha, cfg.identities)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits 2, which PostgreSQL would read as "not found": a typo in
        # restore_command must stop recovery instead.
        _say(f"error: {message}")
        raise SystemExit(ABORT)


def main(argv: Sequence[str]) -> int:
    try:
        return _main(argv)
    except SystemExit as exc:  # --help exits 0; our parser's errors carry ABORT
        return exc.code if isinstance(exc.code, int) else ABORT
    except BaseException as exc:  # noqa: BLE001 - never let an unexpected error read as "not found"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _say(f"error: unexpected {type(exc).__name__}: {first} (recovery stops here; fix and restart)")
        return ABORT


def _main(argv: Sequence[str]) -> int:
    p = _Parser(prog="pgkeeper wal-fetch",
                description="Restore one archived WAL file (restore_command with %%f %%p).")
    add_location_args(p)
    p.add_argument("wal_name", help="WAL file name (%%f)")
    p.add_argument("dest", help="where to write it (%%p)")
    args = p.parse_args(list(argv))
    try:
        cfg = config.load(args.config, spool=args.spool, repo=args.repo)
        name = check_wal_name(args.wal_name)
        raw = fetch(cfg, name)
        if raw is None:
            return MISSING
        atomic_write_bytes(Path(args.dest), raw)
    except (PgkeeperError, BadWalName) as exc:
        _say(f"error: {exc}")
        return ABORT
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        _say(f"error: cannot restore {args.wal_name}: {exc.strerror or exc}{where}")
        return ABORT
    return RESTORED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`pgkeeper wal-fetch [--config F | --repo DIR] %f %p`: PostgreSQL's restore_command.

Looks in the local spool first, then in S3 (boto3 only, no Prefect), checks the sha256 the
object is named with, and writes the file atomically. Exit codes follow PostgreSQL:
  0    the file was restored;
  1    no such file in the archive (quietly: PostgreSQL asks for files past the end of WAL
       and for timeline histories that never existed);
  255  the file exists but could not be trusted or read (corrupt, S3 unreachable...).
       PostgreSQL aborts recovery on exit codes above 125, which is what we want: a "not
       found" here would make it end recovery early and promote a cluster missing data.
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


def fetch(cfg: config.WalConfig, name: str) -> bytes | None:
    """The raw WAL file `name`, checksum-checked, or None if it is not archived."""
    local = LocalWalStore(cfg.spool)
    copies = local.find(name)
    if len(copies) > 1:
        raise IntegrityError(f"{name} is archived twice with different content in {local.describe()}")
    if copies:
        return local.read(copies[0])
    if cfg.s3 is None:
        return None
    from pgkeeper.wal.s3 import S3WalStore

    remote = S3WalStore(cfg.s3)
    found = remote.find(name)
    if len(found) > 1:
        raise IntegrityError(f"{name} is archived twice with different content in {remote.describe()}")
    if not found:
        return None
    sha, rel = found[0]
    return decompress_checked(remote.get(rel), name, sha)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="pgkeeper wal-fetch",
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
        print(f"pgkeeper wal-fetch: error: {exc}", file=sys.stderr)
        return ABORT
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"pgkeeper wal-fetch: error: cannot restore {args.wal_name}: {exc.strerror or exc}{where}",
              file=sys.stderr)
        return ABORT
    return RESTORED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

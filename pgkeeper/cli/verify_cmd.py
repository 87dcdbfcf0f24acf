"""`pgkeeper verify [BACKUP]`: prove a backup by restoring it (the verify flow), one line per test."""

from __future__ import annotations

import argparse
import os
import sys

from pgkeeper.cli.common import (
    add_archive_args,
    add_connection_args,
    add_repository_args,
    archive_params,
    connection_params,
    repository_params,
)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("0", "false", "no", "off")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="verify a backup: integrity, format, restore drill, data, freshness")
    p.add_argument("backup", nargs="?", default="latest",
                   help="'latest' (default), backup_YYYYMMDD_HHMMSS or an old file name such as "
                        "backup_20240315_143022.sql.gz")
    add_connection_args(p)
    add_repository_args(p)
    p.add_argument("--no-restore", dest="restore", action="store_false",
                   default=_env_flag("VERIFY_RESTORE", True),
                   help="check integrity and format only (also VERIFY_RESTORE=false)")
    p.add_argument("--from-s3", dest="source", action="store_const", const="s3", default="local",
                   help="verify the copy in S3 instead of the local one")
    p.add_argument("--scratch-connection-block", default=None,
                   help="restore into this server (a connection block) instead of the source server")
    add_archive_args(p)
    p.add_argument("--server", help="the server whose backups 'latest' means, when several servers' backups share "
                                    "the database's name (host:port, system identifier or server key)")
    p.add_argument("--jobs", "-j", type=int, default=2, help="pg_restore parallel jobs (default 2)")
    p.add_argument("--max-age-hours", type=float, default=float(os.environ.get("MAX_BACKUP_AGE_HOURS", 26)),
                   help="the newest backup must be younger than this (default 26, MAX_BACKUP_AGE_HOURS)")
    p.add_argument("--anomaly-threshold", type=float, default=0.5,
                   help="warn when size or a table's rows fell by more than this fraction (default 0.5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgkeeper.local_server import ensure_api

    ensure_api(announce=False)
    from pgkeeper.lean_imports import imports_without_gc

    with imports_without_gc():
        from pgkeeper.flows.verify import verify
        from pgkeeper.tasks.verify_checks import VerificationFailed

    params = {**connection_params(args), **repository_params(args)}
    try:
        report = verify(backup=args.backup, restore=args.restore, source=args.source,
                        scratch_connection_block=args.scratch_connection_block, jobs=args.jobs,
                        max_age_hours=args.max_age_hours, anomaly_threshold=args.anomaly_threshold,
                        server=args.server,
                        **params, **archive_params(args))
    except VerificationFailed as exc:
        if exc.report is None:
            raise
        print("\n".join(exc.report.lines()))
        print(f"(backup {exc.report.backup_id} of database {exc.report.database}, read from {exc.report.source})")
        sys.stdout.flush()
        raise
    print("\n".join(report.lines()))
    print(f"(backup {report.backup_id} of database {report.database}, read from {report.source})")
    for line in report.anomalies:
        print(f"WARNING: {line}")
    return 0

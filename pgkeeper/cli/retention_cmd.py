"""`pgkeeper retention`: apply the keep policy now (the retention flow)."""

from __future__ import annotations

import argparse

from pgkeeper.cli.common import add_repository_args, repository_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retention", help="remove backups the retention policy no longer keeps (the retention flow)")
    add_repository_args(p)
    p.add_argument("--dry-run", action="store_true", help="show what would be removed and why; remove nothing")
    p.add_argument("--s3", action="store_true", help="the offsite bucket instead of the local directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgkeeper.local_server import ensure_api

    ensure_api()
    from pgkeeper.cli.common import print_table
    from pgkeeper.lean_imports import imports_without_gc

    with imports_without_gc():
        from pgkeeper.flows.retention import retention

    reports = retention(**repository_params(args), sources=["s3"] if args.s3 else ["local"], dry_run=args.dry_run)
    for r in reports:
        verb = "WOULD REMOVE" if r.dry_run else "REMOVED"
        if r.removed:
            print_table(["BACKUP", verb, "REASON"], [[i, "yes", r.reasons[i]] for i in r.removed])
        print(f"retention of {r.location} ({r.policy}): {r.summary()}{' (dry run)' if r.dry_run else ''}")
    if reports and reports[-1].wal:  # WAL is expired once, after every source: one line
        print(f"WAL retention: {reports[-1].wal}")
    return 0

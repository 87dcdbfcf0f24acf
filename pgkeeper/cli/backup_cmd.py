"""`pgkeeper backup`: run the backup flow once, now."""

from __future__ import annotations

import argparse

from pgkeeper.cli.common import add_connection_args, add_repository_args, connection_params, repository_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="back up a database now (the backup flow)")
    add_connection_args(p)
    add_repository_args(p)
    p.add_argument("--label", action="append", default=[], help="label to record in the manifest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgkeeper.local_server import ensure_api

    url = ensure_api()
    from pgkeeper.early import start_backup
    from pgkeeper.early_stream import started_early
    from pgkeeper.lean_imports import imports_without_gc

    with started_early(lambda: start_backup(args, url)):  # the dump may start while Prefect is imported
        with imports_without_gc():
            from pgkeeper.flows.backup import backup

        state = backup(**connection_params(args), **repository_params(args), labels=args.label, return_state=True)
    state.result()  # raises the run's error if it failed
    print(f"backup {state.message}")  # the run's final line: the backup, then upload and retention
    return 0

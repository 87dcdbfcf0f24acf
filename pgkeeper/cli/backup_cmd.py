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

    ensure_api()
    from pgkeeper.flows.backup import backup
    from pgkeeper.fmt import contents, human_bytes, human_seconds

    m = backup(**connection_params(args), **repository_params(args), labels=args.label)
    ratio = f", ratio {m.ratio:.1f}x" if m.ratio else ""
    print(f"backup {m.backup_id} of {m.database}: {human_bytes(m.size)}{ratio}, "
          f"{contents(len(m.tables), m.objects.get('indexes', 0), sum(m.tables.values()))}, "
          f"{human_seconds(m.duration_seconds)}, {m.status}"
          + "".join(f"; {line}" for line in m.outcome))
    return 0

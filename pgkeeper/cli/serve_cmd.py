"""`pgkeeper serve`: run the service on this machine (Prefect server if needed, a worker)."""

from __future__ import annotations

import argparse

from pgkeeper.cli.server_cmd import add_server_options, apply_server_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the schedules on this machine: a local Prefect server if none is "
                                     "configured, and a worker for the pgkeeper work pool")
    p.add_argument("--setup", action="store_true", help="run `pgkeeper setup` first")
    p.add_argument("--limit", type=int, default=None, help="most flow runs this worker runs at once")
    add_server_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    apply_server_options(args)
    from pgkeeper.local_server import configured_api_url, ensure_api, is_healthy, local_api_url

    # Stop on exit only a server this command starts, not one that was already running.
    started_server = configured_api_url() is None and not is_healthy(local_api_url())
    url = ensure_api()
    from pgkeeper.deployments.serve import serve

    return serve(url, pool=os.environ.get("PGKEEPER_WORK_POOL", "pgkeeper"), limit=args.limit,
                 run_setup_first=args.setup, stop_server=started_server)

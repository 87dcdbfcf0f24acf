"""`pgkeeper server start|stop|status`: the local Prefect server pgkeeper starts for itself."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="the local Prefect server (start, stop, status)")
    p.add_argument("action", choices=["start", "stop", "status"])
    add_server_options(p)
    p.set_defaults(func=run)


def add_server_options(p: argparse.ArgumentParser) -> None:
    """Where a local server pgkeeper starts listens, and which database it keeps its state in."""
    p.add_argument("--host", default=None, help="address the local Prefect server listens on (default 127.0.0.1; "
                                                "an address other machines reach, for their workers)")
    p.add_argument("--database-url", default=None,
                   help="the local Prefect server's own database, e.g. postgresql://prefect@dbhost:5432/prefect "
                        "(password in PREFECT_SERVER_DATABASE_PASSWORD, never here); default SQLite")


def apply_server_options(args: argparse.Namespace) -> None:
    import os

    from pgkeeper.local_server import DATABASE_URL_SETTING, prefect_database_url

    if args.host:
        os.environ["PGKEEPER_SERVER_HOST"] = args.host
    if args.database_url:
        prefect_database_url(args.database_url)  # a bad URL is one line now, not a server that will not start
        os.environ[DATABASE_URL_SETTING] = args.database_url


def run(args: argparse.Namespace) -> int:
    from pgkeeper import local_server as ls
    from pgkeeper.server_auth import credential_path

    apply_server_options(args)
    url = ls.local_api_url()
    if args.action == "start":
        ls.start_local_server(announce=True)
        # Where the credential is, never the credential itself: terminals get logged.
        print(f"local Prefect server running: UI at {url[:-4]} "
              f"(it asks for the auth string: the contents of {credential_path()})")
    elif args.action == "stop":
        print("local Prefect server stopped" if ls.stop_local_server() else "no local Prefect server was running")
    else:
        print(f"local Prefect server at {url[:-4]}: {'up' if ls.is_healthy(url) else 'down'}")
    return 0

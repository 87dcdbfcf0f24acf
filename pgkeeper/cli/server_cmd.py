"""`pgkeeper server start|stop|status`: the local Prefect server pgkeeper starts for itself."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="the local Prefect server (start, stop, status)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgkeeper import local_server as ls
    from pgkeeper.server_auth import credential_path

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

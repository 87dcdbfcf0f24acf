"""`pgkeeper metrics`: serve a Prometheus endpoint computed from the repository (pgkeeper.metrics)."""

from __future__ import annotations

import argparse

from pgkeeper.cli.common import add_connection_args, add_repository_args, connection_params

DEFAULT_PORT = 9855  # beside pgbackrest_exporter's 9854


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="serve Prometheus metrics from the repository and pg_stat_archiver")
    add_repository_args(p)
    add_connection_args(p)
    p.add_argument("--s3", action="store_true", help="read the catalog from the offsite bucket")
    p.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="ADDR:PORT",
                   help=f"where to serve /metrics (default 127.0.0.1:{DEFAULT_PORT})")
    p.add_argument("--no-archiver", action="store_true", help="do not read pg_stat_archiver")
    p.set_defaults(func=run)


def build_collector(args: argparse.Namespace):  # -> RepositoryCollector
    """Everything that may need Prefect (blocks) happens here, once; scrapes only read."""
    from pgkeeper.cli.catalog_cmd import open_repository
    from pgkeeper.metrics import RepositoryCollector, read_archiver, wal_window
    from pgkeeper.wal.setup import config_from_repository

    repo = open_repository(args)
    storage = repo.storage("s3" if args.s3 else "local")
    archiver, database = None, args.database
    if not args.no_archiver:
        from pgkeeper.config import load_connection

        params = connection_params(args)
        block = params.pop("connection_block") if args.connection_block or not args.backup_dir else None
        try:
            conn = load_connection(block, **params)
        except Exception as exc:  # no database configured: the repository's figures still count
            print(f"pgkeeper metrics: no pg_stat_archiver figures ({exc})", flush=True)
        else:
            archiver, database = (lambda: read_archiver(conn.connect)), conn.database
    walcfg = config_from_repository(repo)
    s3_store = None
    if walcfg.s3 is not None:
        from pgkeeper.wal.s3 import S3WalStore

        s3_store = S3WalStore(walcfg.s3)
    return RepositoryCollector(storage, database, archiver, wal_window(walcfg.spool, s3_store))


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from pgkeeper.errors import BadName
    from pgkeeper.metrics import serve

    addr, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise BadName(f"--listen {args.listen!r}: expected ADDR:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    collector = build_collector(args)
    server = serve(collector, int(port), addr or "0.0.0.0")
    print(f"pgkeeper metrics: http://{addr or '0.0.0.0'}:{port}/metrics "
          f"(repository {collector.storage.describe()})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.shutdown()
    return 0

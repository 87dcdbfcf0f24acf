"""`pgkeeper pitr`: recover the cluster as it was at a moment, into a new data directory."""

from __future__ import annotations

import argparse

from pgkeeper.cli.common import add_archive_args, add_repository_args, archive_params, repository_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pitr", help="point-in-time recovery into a new data directory (the pitr flow)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-time", help="e.g. '2024-03-15 14:30:00+00' (UTC when no zone is given)")
    target.add_argument("--target-lsn", help="e.g. 0/3000060")
    target.add_argument("--target-name", help="a restore point made with pg_create_restore_point()")
    target.add_argument("--latest", action="store_true", help="replay all archived WAL")
    p.add_argument("--data-dir", required=True, help="new (or empty) directory for the recovered cluster")
    p.add_argument("--port", type=int, default=5439, help="port the recovered server listens on")
    p.add_argument("--source", choices=["auto", "local", "s3"], default="auto",
                   help="where to read the base backup (auto: local if it has one, else the bucket)")
    p.add_argument("--wal-config", help="WAL config for restore_command (default: from the repository)")
    p.add_argument("--keep-archiving", action="store_true",
                   help="leave archive_mode as in the backup (default: off, so the copy does not write into "
                        "the original's archive)")
    add_archive_args(p)
    p.add_argument("--timeout", type=int, default=3600, help="seconds to wait for recovery")
    p.add_argument("--system-identifier", help="the cluster to recover (default: the one the WAL archive belongs to)")
    add_repository_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgkeeper.local_server import ensure_api

    url = ensure_api()
    from pgkeeper.early_pitr import start_unpack
    from pgkeeper.early_stream import started_early
    from pgkeeper.lean_imports import imports_without_gc

    with started_early(lambda: start_unpack(args, url)):  # the unpack may start while Prefect is imported
        with imports_without_gc():
            from pgkeeper.flows.pitr import pitr

        r = pitr(data_dir=args.data_dir, port=args.port, target_time=args.target_time, target_lsn=args.target_lsn,
                 target_name=args.target_name, latest=args.latest, source=args.source, wal_config=args.wal_config,
                 keep_archiving=args.keep_archiving, timeout_seconds=args.timeout,
                 system_identifier=args.system_identifier, **repository_params(args), **archive_params(args))
    print(f"recovered cluster {r.system_identifier} into {r.data_dir} from {r.backup_id} to {r.target}: "
          f"PostgreSQL is running on port {r.port}, "
          f"promoted (timeline {r.timeline}); {r.reached}")
    return 0

"""`pgkeeper wal-setup`, `pgkeeper base-backup`, `pgkeeper wal-ship`: the WAL side of pgkeeper.

(`wal-push` / `wal-fetch` are dispatched by cli.main before argparse: they must stay light.)
"""

from __future__ import annotations

import argparse

from pgkeeper.cli.common import add_connection_args, add_repository_args, connection_params, repository_params

SETTINGS_NEEDING_RESTART = ("wal_level", "archive_mode")


def _add_wal_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wal-config", help="WAL config file that archive_command/restore_command read "
                   "(default $PGKEEPER_WAL_CONFIG or /etc/pgkeeper/wal.json)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("wal-setup", help="show (or --apply) the server settings for WAL archiving via wal-push")
    add_connection_args(p)
    add_repository_args(p)
    _add_wal_config_arg(p)
    p.add_argument("--archive-timeout", default="60s",
                   help="force a WAL switch after this long with activity: the worst-case data loss (RPO)")
    p.add_argument("--apply", action="store_true", help="write the WAL config file and ALTER SYSTEM the settings")
    p.set_defaults(func=run_setup)

    p = sub.add_parser("base-backup", help="take a physical base backup now (the base-backup flow)")
    add_connection_args(p)
    add_repository_args(p)
    _add_wal_config_arg(p)
    p.add_argument("--no-verify", action="store_true", help="skip the verification (stored files read back, "
                   "WAL parsed; pg_verifybackup when staged)")
    p.add_argument("--label", action="append", default=[], help="label to record in the manifest")
    p.set_defaults(func=run_base_backup)

    p = sub.add_parser("wal-ship", help="move spooled WAL to S3 and check archiver health (the wal-ship flow)")
    add_connection_args(p)
    add_repository_args(p)
    _add_wal_config_arg(p)
    p.add_argument("--max-lag", type=float, default=900, help="fail when archiving is this many seconds behind")
    p.add_argument("--keep-local", type=float, default=None, help="seconds to keep shipped WAL in the spool")
    p.set_defaults(func=run_wal_ship)


def run_setup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pgkeeper.local_server import ensure_api

    ensure_api(announce=False)
    from pgkeeper.config import load_connection, load_repository
    from pgkeeper.wal import config as walconfig
    from pgkeeper.wal.setup import archive_settings, config_from_repository, provide_runtime, write_config

    cp, rp = connection_params(args), repository_params(args)
    conn = load_connection(cp.pop("connection_block"), **cp)
    repo = load_repository(rp["repository_block"], path=rp["backup_dir"])
    cfg_path = walconfig.config_path(args.wal_config)
    cfg = config_from_repository(repo)
    if args.apply:
        runtime = provide_runtime()
        if runtime is not None:
            print(f"the WAL commands run from {runtime} (a copy the server's OS user can read)")
    wanted = archive_settings(cfg_path, args.archive_timeout, cfg=cfg)
    with conn.connect(autocommit=True) as c:
        current = {k: c.execute("SELECT current_setting(%s)", (k,)).fetchone()[0] for k in wanted}  # type: ignore[index]
        print(f"WAL archiving for {conn.describe()} (spool {cfg.spool}"
              f"{', then ' + cfg.s3.describe_wal() if cfg.s3 else ''}; config {cfg_path}):")
        for k, v in wanted.items():
            literal = v.strip("'").replace("''", "'")
            mark = "ok" if current[k] == literal else "change"
            print(f"  {k} = {v}    (now {current[k]!r}: {mark})")
        if not args.apply:
            print("run again with --apply to write the config file and set these with ALTER SYSTEM")
            return 0
        write_config(Path(cfg_path), cfg)
        for k, v in wanted.items():
            c.execute(f"ALTER SYSTEM SET {k} = {v}")  # names are ours; values quoted by conf_quote
        c.execute("SELECT pg_reload_conf()")
    restart = [k for k in SETTINGS_NEEDING_RESTART if current[k] != wanted[k].strip("'")]
    print(f"wrote {cfg_path}; settings applied with ALTER SYSTEM and reloaded")
    if restart:
        print(f"restart PostgreSQL to apply {', '.join(restart)} (e.g. `pg_ctl restart` or "
              "`systemctl restart postgresql`); archiving starts after the restart")
    return 0


def run_base_backup(args: argparse.Namespace) -> int:
    from pgkeeper.local_server import ensure_api

    url = ensure_api()
    from pgkeeper.early_base import start_base_backup
    from pgkeeper.early_stream import started_early
    from pgkeeper.lean_imports import imports_without_gc

    with started_early(lambda: start_base_backup(args, url)):  # the stream may start while Prefect is imported
        with imports_without_gc():
            from pgkeeper.flows.base_backup import base_backup

        m = base_backup(**connection_params(args), **repository_params(args), wal_config=args.wal_config,
                        verify=not args.no_verify, labels=args.label)
    from pgkeeper.fmt import human_bytes, human_seconds

    print(f"base backup {m.backup_id}: {human_bytes(m.size)}, WAL {m.start_lsn}..{m.stop_lsn} timeline {m.timeline}, "
          f"{human_seconds(m.duration_seconds)}, {m.status}; point-in-time recovery possible from "
          f"{m.finished_at.isoformat(sep=' ', timespec='seconds')}")
    return 0


def run_wal_ship(args: argparse.Namespace) -> int:
    from pgkeeper.local_server import ensure_api

    ensure_api()
    from pgkeeper.lean_imports import imports_without_gc

    with imports_without_gc():
        from pgkeeper.flows.wal_ship import wal_ship
    from pgkeeper.fmt import human_seconds

    s = wal_ship(**connection_params(args), **repository_params(args), wal_config=args.wal_config,
                 keep_local_seconds=args.keep_local, max_lag_seconds=args.max_lag)
    print(f"WAL archive ok: {s.archived_count} archived, last {s.last_archived_wal or '-'}, "
          f"{s.pending_segments} waiting, lag {human_seconds(s.lag_seconds)}")
    return 0

"""`pgkeeper restore`: put a backup back, asking on the terminal first (the UI asks with a form)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pgkeeper.cli.common import (
    add_archive_args,
    add_connection_args,
    add_repository_args,
    archive_params,
    connection_params,
    repository_params,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore a backup (into a new database first, then swapped in)",
                       description="Restore BACKUP ('latest', backup_YYYYMMDD_HHMMSS or an old file name such as "
                                   "backup_20240315_143022.sql.gz). Replacing a database asks for its name first; "
                                   "the previous database is kept, renamed.")
    p.add_argument("backup", help="latest, a backup id, or an old backup file name")
    p.add_argument("--from-s3", action="store_true", help="read the backup from S3 instead of the local repository")
    p.add_argument("--into", metavar="NAME", help="restore into a new database NAME; nothing else is touched")
    p.add_argument("--target", metavar="NAME", help="replace database NAME (default: the backup's own database)")
    p.add_argument("--server", help="the server whose backups 'latest' means, when several servers' backups share "
                                    "the database's name (host:port, system identifier or server key)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--jobs", "-j", type=int, default=2, help="parallel pg_restore jobs (default 2)")
    p.add_argument("--no-safety-backup", action="store_true",
                   help="do not back up the replaced database (by default it is backed up right after the "
                        "swap, as a run of its own, and kept until that backup is listed)")
    p.add_argument("--drop-old", action="store_true", help="drop the replaced database instead of keeping it")
    p.add_argument("--keep-old-hours", type=float, default=72,
                   help="how long the replaced database is kept (default 72)")
    p.add_argument("--no-owner", dest="keep_ownership", action="store_false", default=True,
                   help="leave out owners and GRANTs: everything is owned by the database's owner role, and "
                        "what the backup revoked from PUBLIC stays revoked (default: owners and GRANTs as they were)")
    p.add_argument("--keep-ownership", action="store_true", help=argparse.SUPPRESS)  # the default now
    add_archive_args(p)
    p.add_argument("--create-roles", action="store_true",
                   help="create the roles the backup needs that this server lacks, from the backup "
                        "(existing roles are never changed)")
    add_connection_args(p)
    add_repository_args(p)
    p.set_defaults(func=run)


def describe_plan(plan, safety_backup: bool = True) -> str:  # plan: RestorePlan
    from pgkeeper.fmt import contents, human_bytes, human_seconds

    now = (f"exists, {human_bytes(plan.target_size)}; it will be kept as {plan.retire_as}"
           if plan.target_exists else "does not exist yet; it will be created")
    return "\n".join([
        f"Replace database {plan.target} with backup {plan.backup_id}",
        f"  target:   {plan.target} ({now})",
        f"  backup:   {plan.backup_id} of {plan.backup_database}, from {plan.source} ({plan.location})",
        f"  age:      {human_seconds(plan.age_seconds)}, finished {plan.finished_at:%Y-%m-%d %H:%M:%S} UTC",
        f"  size:     {human_bytes(plan.size)} stored, "
        f"{contents(len(plan.tables), plan.objects.get('indexes', 0), sum(plan.tables.values()))}",
        f"  status:   {plan.status}",
        *([f"  roles:    {', '.join(plan.roles_to_create)} will be created from the backup"]
          if plan.roles_to_create else []),
        "The backup is restored into a new database and checked before anything is swapped.",
        *([f"{plan.retire_as} is then backed up (label pre-restore) and not dropped before that backup is listed."]
          if plan.target_exists and safety_backup else []),
    ])


def ask(plan, safety_backup: bool = True) -> str | None:
    """The terminal's confirmation: the target's name typed back (returned), else None."""
    print(describe_plan(plan, safety_backup))
    try:
        typed = input(f"Type the database name ({plan.target}) to go ahead: ")
    except EOFError:
        print("\nno answer (use --yes when there is no terminal): nothing was changed", file=sys.stderr)
        return None
    if typed.strip() != plan.target:
        print(f"{typed.strip()!r} is not {plan.target!r}: restore cancelled, nothing was changed", file=sys.stderr)
        return None
    return typed.strip()


def run(args: argparse.Namespace) -> int:
    if args.into and args.target:
        print("pgkeeper: error: give --into (a new database) or --target (a database to replace), not both",
              file=sys.stderr)
        return 2
    from pgkeeper.local_server import ensure_api

    url = ensure_api()
    from pgkeeper.early_restore import start_restore
    from pgkeeper.early_stream import started_early

    with started_early(lambda: start_restore(args, url)):  # the dump may be fetched while Prefect is imported
        return _restore(args)


def _restore(args: argparse.Namespace) -> int:
    from pgkeeper.lean_imports import imports_without_gc

    with imports_without_gc():
        from pgkeeper.config import load_connection, load_repository
        from pgkeeper.early_restore import name_shadow
        from pgkeeper.errors import ExitCode
        from pgkeeper.flows.restore import restore
        from pgkeeper.fmt import contents, human_seconds
        from pgkeeper.tasks.restore_confirmation import confirmed_at_terminal
        from pgkeeper.tasks.restore_steps import plan_restore

    conn_params, repo_params = connection_params(args), repository_params(args)
    mode = "new" if args.into else "replace"
    target = args.into or args.target
    source = "s3" if args.from_s3 else "local"
    conn = load_connection(conn_params["connection_block"], database=args.database, host=args.host,
                           port=args.port, user=args.user)
    repo = load_repository(repo_params["repository_block"], path=args.backup_dir)
    # Resolved here so that what was confirmed is what runs, even if a new backup lands meanwhile.
    plan = plan_restore(conn, repo, args.backup, source, mode, target, args.keep_ownership, args.create_roles,
                        args.server)
    plan = name_shadow(plan)  # the early start's shadow, when this plan is its (early_shadow.py)
    typed = None
    if mode == "replace" and not args.yes:
        typed = ask(plan, not args.no_safety_backup)
        if typed is None:
            return ExitCode.NOT_CONFIRMED
    print(f"restoring {plan.backup_id} (database {plan.backup_database}, from {plan.source}) into {plan.target}")
    # The flow runs in this process: the terminal's confirmation reaches it here, where no
    # deployment parameter can (tasks/restore_confirmation.py), and is recorded by the run.
    with confirmed_at_terminal(typed):
        report = restore(backup=plan.backup_id, mode=mode, target=plan.target, source=source, confirmed=True,
                         safety_backup=not args.no_safety_backup, keep_old=not args.drop_old,
                         keep_old_hours=args.keep_old_hours, keep_ownership=args.keep_ownership,
                         create_roles=args.create_roles, jobs=args.jobs, plan=plan, detach_safety_backup=True,
                         **conn_params, **repo_params, **archive_params(args))
    print(f"restored {report.backup_id} into {report.target}: "
          f"{contents(len(report.tables), report.objects.get('indexes', 0), sum(report.tables.values()))}, "
          f"content proven against the backup; RTO {human_seconds(report.rto_seconds)}")
    if report.safety_backup_pending:
        copy = report.safety_backup_pending
        try:
            pid, log = start_safety_backup(args, copy)
        except OSError as exc:  # the restore stands; the copy is held until a backup of it is listed
            print(f"could not start the safety backup of the replaced database ({exc.strerror}): {copy} is kept "
                  f"until one is listed; run `pgkeeper backup --database {copy}`", file=sys.stderr)
        else:
            print(f"safety backup of the replaced database ({copy}, kept until it is listed): "
                  f"running on as process {pid}, its own run in the Prefect UI; log: {log}")
    elif report.safety_backup_id or report.safety_backup_error:
        print(report.safety_line(), file=sys.stderr if report.safety_backup_error else sys.stdout)
    if report.old_copy and report.old_copy_keep_until:
        print(f"previous database kept as {report.old_copy} until "
              f"{report.old_copy_keep_until:%Y-%m-%d %H:%M} UTC")
    return 0


def start_safety_backup(args: argparse.Namespace, copy: str) -> tuple[int, Path]:
    """Start `pgkeeper backup` of the replaced database as a process of its own, which outlives
    this command (the database is back in service: nobody waits for it); its pid and log file.
    Secrets reach it as they reached this command (environment, blocks, files), never in argv."""
    from pgkeeper.home import pgkeeper_home

    logs = pgkeeper_home() / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    log = logs / f"safety-backup-{copy}.log"
    argv = [sys.executable, "-m", "pgkeeper.cli.main", "backup", "--database", copy, "--label", "pre-restore"]
    for flag, value in (("--host", args.host), ("--port", args.port), ("--user", args.user),
                        ("--connection-block", args.connection_block), ("--backup-dir", args.backup_dir),
                        ("--repository-block", args.repository_block)):
        if value is not None:
            argv += [flag, str(value)]
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # not ended with this command's terminal
    finally:
        os.close(fd)
    return child.pid, log

"""Physical base backup: `pgkeeper base-backup` against `pgbackrest backup --type=full`, alternating.

    .venv/bin/python benchmarks/base_backup.py [--scale 50] [--rounds 3] [--reuse DIR]

A throwaway PostgreSQL 15 cluster gets the benchmark database (about 1 GB at scale 50, see
bench_db.py) and archives its WAL to both tools at once: archive_command is
`pgkeeper wal-push ... %p && pgbackrest ... archive-push %p`, so each tool's backup finds its own
archive complete and both wait on the same archiver (neither is switched off between rounds).
pgBackRest is Debian's package (installed when missing, see pgbackrest_peer.py), configured
with compress-type=zst, process-max=2, start-fast=y, its repository on the same disk.

Each round times, as a user runs them:
  a. `pgkeeper base-backup` (the whole process: start-up, Prefect flow against a running API,
     pg_basebackup, WAL check, verification, manifest, exit);
  b. `pgbackrest backup --type=full`.
It prints medians, min and max of each, the ratio a/b (target <= 1.1) and the stored sizes, and
how much of a. is pg_basebackup's stream into the repository (the manifest's start to finish);
the rest is the command's fixed cost (start-up, Prefect, the steps after the stream). The
command runs with the old scripts' variables, so pg_basebackup starts before Prefect is imported
(pgkeeper/early_base.py) and the stream overlaps the start-up; PGKEEPER_EARLY_START=0 in the
environment measures the run without it (benchmarks/early_start.py --base alternates both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")

from bench_db import PASSWORD, SOURCE_DB, bench_arguments, bench_cluster, build, machine_phase, use_own_home  # noqa: E402
from pgbackrest_peer import PgBackRest, ensure_installed  # noqa: E402


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def new_entry(folder: Path, before: set[str]) -> Path:
    """The one entry of `folder` that a round added."""
    added = sorted({p.name for p in folder.iterdir()} - before)
    if not added:
        raise SystemExit(f"no new backup in {folder}")
    return folder / added[-1]


def stream_seconds(folder: Path) -> float:
    """pg_basebackup's start to its end, from the backup's manifest."""
    from datetime import datetime

    m = json.loads((folder / "manifest.json").read_text())
    return (datetime.fromisoformat(m["finished_at"]) - datetime.fromisoformat(m["started_at"])).total_seconds()


def stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.2f} s  (min {min(xs):.2f}, max {max(xs):.2f})"


def main() -> int:
    from measure import compile_package

    compile_package(ROOT)  # pgkeeper as installed: its modules' bytecode compiled (measure.py)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_arguments(ap)
    ap.add_argument("--show-log", action="store_true", help="print pgkeeper's log (INFO, with times) each round")
    ap.add_argument("--profile", metavar="FILE", help="record the first pgkeeper round with py-spy (--idle; flame "
                    "graph SVG, or collapsed stacks when FILE ends in .txt; py-spy from PyPI) before timing it")
    args = ap.parse_args()
    ensure_installed()

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from pgkeeper.localcluster import scratch_dir
    from pgkeeper.wal.command import archive_command, conf_quote
    from pgkeeper.wal.config import WalConfig
    from pgkeeper.wal.setup import write_config

    with bench_cluster(args.reuse, "pgkeeper-bench-basebackup-") as (cluster, _work):
        build(cluster, args.scale)
        # The server user archives into it; a reused cluster keeps it (its settings name it).
        base = Path(args.reuse) / "bb" if args.reuse else scratch_dir("pgkeeper-bench-bb-")
        base.mkdir(mode=0o755, exist_ok=True)
        for old in (base / "repo", base / "pgbackrest" / "repo"):  # earlier runs' backups and WAL
            shutil.rmtree(old, ignore_errors=True)
        try:
            repo = base / "repo"
            repo.mkdir(mode=0o755)
            wal_cfg = base / "wal.json"
            write_config(wal_cfg, WalConfig(spool=str(repo / "wal")))
            peer = PgBackRest(cluster, base / "pgbackrest")
            both = f"{archive_command(wal_cfg)} && {peer.archive_command().strip(chr(39))}"
            cluster.write_conf({"wal_level": "replica", "archive_mode": "on", "archive_command": conf_quote(both)})
            peer.prepare_cluster()  # writes its config and restarts: archive_mode takes effect
            use_own_home(base / "home")  # after the restart: the server's wal-push keeps its user's own
            peer.run("stanza-create")
            env = {**os.environ, "POSTGRES_HOST": cluster.host, "POSTGRES_PORT": str(cluster.port),
                   "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": SOURCE_DB,
                   "BACKUP_DIR": str(repo)}
            if args.show_log:
                env["PREFECT_LOGGING_LEVEL"] = "INFO"
            pgkeeper = [str(Path(sys.executable).parent / "pgkeeper"), "base-backup", "--wal-config", str(wal_cfg)]
            ours, theirs, our_sizes, their_sizes, streams = [], [], [], [], []
            with prefect_test_harness(server_startup_timeout=600):
                env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
                for i in range(args.rounds):
                    before = {p.name for p in (repo / "backups").glob("*")}
                    if args.profile and i == 0:
                        fmt = ["-f", "raw"] if args.profile.endswith(".txt") else []
                        spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-s", "--idle", "-r", "50",
                               *fmt, "-o", args.profile, "--"]
                        subprocess.run(spy + pgkeeper, env=env, check=True, capture_output=True)
                    started = time.monotonic()
                    out = subprocess.run(pgkeeper, env=env, check=True, capture_output=True, text=True)
                    ours.append(time.monotonic() - started)
                    if args.show_log:
                        print(out.stderr, flush=True)
                    folder = new_entry(repo / "backups", before)
                    our_sizes.append(tree_size(folder))
                    streams.append(stream_seconds(folder))
                    backups = peer.repo / "backup" / peer.stanza
                    before = {p.name for p in backups.iterdir()} if backups.exists() else set()
                    started = time.monotonic()
                    peer.run("backup", "--type=full")
                    theirs.append(time.monotonic() - started)
                    their_sizes.append(tree_size(new_entry(backups, before | {"backup.info", "backup.info.copy",
                                                                             "latest", "backup.history"})))
                    print(f"round {i + 1}: pgkeeper base-backup {ours[-1]:.2f} s "
                          f"({out.stdout.strip().splitlines()[-1]}), pgbackrest {theirs[-1]:.2f} s; "
                          f"{machine_phase()}", flush=True)
        finally:
            if not args.reuse:
                shutil.rmtree(base, ignore_errors=True)

    a, b = statistics.median(ours), statistics.median(theirs)
    print()
    print(f"database: {SOURCE_DB} at pgbench scale {args.scale:g}, {args.rounds} rounds (median, min, max)")
    print(f"  a. pgkeeper base-backup           {stats(ours)}   {our_sizes[-1] / 2**20:7.1f} MB")
    print(f"     of which the stream          {stats(streams)}")
    print(f"  b. pgbackrest backup --type=full  {stats(theirs)}   {their_sizes[-1] / 2**20:7.1f} MB")
    print(f"  a/b = {a / b:.2f}  (target <= 1.10; per round: "
          f"{', '.join(f'{x / y:.2f}' for x, y in zip(ours, theirs, strict=True))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`pgkeeper backup` with its early start off and on (PGKEEPER_EARLY_START=0 / 1), alternating.

    .venv/bin/python benchmarks/early_start.py [--scale 50] [--rounds 3] [--reuse DIR] [--api URL] [--tiny] [--base]

The same benchmark database as benchmarks/backup.py (bench_db.py); each round runs the whole
`pgkeeper backup` command (old scripts' variables, no blocks) once with the early start off and
once on, and reports wall time, CPU (user+sys of the process tree, from `wait4`) and peak RSS.
Each run's log (INFO) is checked for the dump step's "early start" line, so a run that silently
took today's path is reported as such. --tiny backs up a 10-row database instead (the fixed cost).
--base runs `pgkeeper base-backup` instead (pgkeeper/early_base.py): the cluster archives its
WAL through `pgkeeper wal-push` into the run's repository (archive_command set, the server
restarted), and the log is checked for the pg-basebackup step's "early start" line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backup import PGKEEPER, prefect_api, process, spread  # noqa: E402
from bench_db import PASSWORD, SOURCE_DB, bench_arguments, bench_cluster, build  # noqa: E402

TINY_DB = "bench_tiny_early"


def one_backup(env: dict[str, str], early: str, command: list[str]) -> tuple[float, float, float, bool]:
    """(wall s, CPU s, peak RSS MB, whether the run adopted an early stream)."""
    cpu: list[float] = []
    log: list[str] = []
    wall, rss = process([*PGKEEPER, *command], {**env, "PGKEEPER_EARLY_START": early}, cpu=cpu, log=log)
    return wall, cpu[0], rss, "early start" in log[0]


def archive_into(cluster, work: Path) -> Path:  # noqa: ANN001
    """archive_command = pgkeeper wal-push into <work>/repo/wal; the WAL config file's path."""
    from pgkeeper.wal.command import archive_command, conf_quote
    from pgkeeper.wal.config import WalConfig
    from pgkeeper.wal.setup import write_config

    work.chmod(0o755)  # the server's OS user writes the spool
    (work / "repo").mkdir(mode=0o755, exist_ok=True)
    cfg = work / "wal.json"
    write_config(cfg, WalConfig(spool=str(work / "repo" / "wal")))
    cluster.write_conf({"wal_level": "replica", "archive_mode": "on",
                        "archive_command": conf_quote(archive_command(cfg))})
    cluster.stop()
    cluster.start()
    return cfg


def tiny_database(cluster) -> str:  # noqa: ANN001
    import psycopg

    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TINY_DB,)).fetchone():
            c.execute(f"CREATE DATABASE {TINY_DB}")
    with psycopg.connect(cluster.conninfo(TINY_DB), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS t AS SELECT i FROM generate_series(1, 10) i")
    return TINY_DB


def main() -> int:
    from measure import compile_package

    compile_package(Path(__file__).resolve().parent.parent)  # pgkeeper as installed (measure.py)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_arguments(ap)
    ap.add_argument("--api", metavar="URL", help="a running Prefect API (default: start a server of our own)")
    ap.add_argument("--tiny", action="store_true", help="a 10-row database instead of the 1 GB one")
    ap.add_argument("--base", action="store_true", help="pgkeeper base-backup instead of pgkeeper backup")
    args = ap.parse_args()

    results: dict[str, list[tuple[float, float, float, bool]]] = {"0": [], "1": []}
    with bench_cluster(args.reuse, "pgkeeper-bench-early-") as (cluster, work):
        database = tiny_database(cluster) if args.tiny else SOURCE_DB
        if not args.tiny:
            build(cluster, args.scale)
        command = ["backup"]
        if args.base:
            command = ["base-backup", "--wal-config", str(archive_into(cluster, work))]
        with prefect_api(args.api, work):
            env = {**os.environ, "POSTGRES_HOST": cluster.host, "POSTGRES_PORT": str(cluster.port),
                   "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": database,
                   "BACKUP_DIR": str(work / "repo"), "PREFECT_LOGGING_LEVEL": "INFO"}
            one_backup(env, "0", command)  # warm-up: the repository and its manifest key exist from here on
            for i in range(args.rounds):
                for early in ("0", "1"):
                    wall, cpu, rss, used = one_backup(env, early, command)
                    results[early].append((wall, cpu, rss, used))
                    print(f"round {i + 1}, early start {'on ' if early == '1' else 'off'}: {wall:.2f} s, "
                          f"CPU {cpu:.2f} s, {rss:.0f} MB, stream adopted: {used}", flush=True)
    for early, runs in results.items():
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        print(f"early start {'on ' if early == '1' else 'off'}: {spread(walls)} s, CPU {spread(cpus)} s, "
              f"peak RSS {max(r[2] for r in runs):.0f} MB, adopted in {sum(r[3] for r in runs)}/{len(runs)} runs")
    on, off = statistics.median(r[0] for r in results["1"]), statistics.median(r[0] for r in results["0"])
    print(f"on/off: {on / off:.2f} (medians; {off - on:+.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`pgkeeper backup` with its early start off and on (PGKEEPER_EARLY_START=0 / 1), alternating.

    .venv/bin/python benchmarks/early_start.py [--scale 50] [--rounds 3] [--reuse DIR] [--api URL] [--tiny]

The same benchmark database as benchmarks/backup.py (bench_db.py); each round runs the whole
`pgkeeper backup` command (old scripts' variables, no blocks) once with the early start off and
once on, and reports wall time, CPU (user+sys of the process tree, from `wait4`) and peak RSS.
Each run's log (INFO) is checked for the dump step's "early start" line, so a run that silently
took today's path is reported as such. --tiny backs up a 10-row database instead (the fixed cost).
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


def one_backup(env: dict[str, str], early: str) -> tuple[float, float, float, bool]:
    """(wall s, CPU s, peak RSS MB, whether the run adopted an early stream)."""
    cpu: list[float] = []
    log: list[str] = []
    wall, rss = process([*PGKEEPER, "backup"], {**env, "PGKEEPER_EARLY_START": early}, cpu=cpu, log=log)
    return wall, cpu[0], rss, "early start" in log[0]


def tiny_database(cluster) -> str:  # noqa: ANN001
    import psycopg

    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TINY_DB,)).fetchone():
            c.execute(f"CREATE DATABASE {TINY_DB}")
    with psycopg.connect(cluster.conninfo(TINY_DB), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS t AS SELECT i FROM generate_series(1, 10) i")
    return TINY_DB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_arguments(ap)
    ap.add_argument("--api", metavar="URL", help="a running Prefect API (default: start a server of our own)")
    ap.add_argument("--tiny", action="store_true", help="a 10-row database instead of the 1 GB one")
    args = ap.parse_args()

    results: dict[str, list[tuple[float, float, float, bool]]] = {"0": [], "1": []}
    with bench_cluster(args.reuse, "pgkeeper-bench-early-") as (cluster, work):
        database = tiny_database(cluster) if args.tiny else SOURCE_DB
        if not args.tiny:
            build(cluster, args.scale)
        with prefect_api(args.api, work):
            env = {**os.environ, "POSTGRES_HOST": cluster.host, "POSTGRES_PORT": str(cluster.port),
                   "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": database,
                   "BACKUP_DIR": str(work / "repo"), "PREFECT_LOGGING_LEVEL": "INFO"}
            one_backup(env, "0")  # warm-up: the repository and its manifest key exist from here on
            for i in range(args.rounds):
                for early in ("0", "1"):
                    wall, cpu, rss, used = one_backup(env, early)
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

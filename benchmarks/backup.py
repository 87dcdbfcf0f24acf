"""Backup: the backup flow against bare pg_dump, same database, same run, alternating.

    .venv/bin/python benchmarks/backup.py [--scale 50] [--rounds 3] [--reuse DIR] [--also-scale 10]

A throwaway PostgreSQL 15 cluster gets a database of about 1 GB at the default scale (see
bench_db.py). Then, alternating, each round times:
  a. `pg_dump -Fc -Z0 > /dev/null`            the raw floor
  b. `pg_dump -Fc -f file`                    bare pg_dump, its own gzip
  c. the backup flow, in a fresh process against a running Prefect API: its body (dump in a
     snapshot with row counts, compress, sha256, quick verify, manifest) and the whole run.
It prints medians, the ratios c/a and c/b, output sizes, the flow process's peak RSS (and how
much of it the data path adds over the imports), and the fixed Prefect overhead of a run.
Targets: c/a <= 1.35, c/b <= 0.5, size <= 0.9x of b, peak RSS <= 150 MB and flat as the
database grows (--also-scale runs the flow on a smaller database for that comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from bench_db import PASSWORD, SOURCE_DB, bench_cluster, build  # noqa: E402


def timed(argv: list[str], env: dict[str, str], stdout=subprocess.DEVNULL) -> float:
    started = time.monotonic()
    subprocess.run(argv, env={**os.environ, **env}, check=True, stdout=stdout)
    return time.monotonic() - started


def child_run(spec: str) -> None:
    """In a fresh process, as `pgkeeper backup` would be: run the flow, report times and memory."""
    args = json.loads(spec)
    started = time.monotonic()
    from pgkeeper.flows.backup import backup

    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import_s = time.monotonic() - started
    t0 = time.monotonic()
    m = backup(connection_block=args["db"], repository_block=args["repo"])
    total = time.monotonic() - t0
    print(json.dumps({"flow_s": total, "body_s": m.duration_seconds, "import_s": import_s, "size": m.size,
                      "raw": m.raw_size, "rss_import_kb": rss_after_import,
                      "rss_peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def flow_in_child(api_url: str, db_block: str, repo_block: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps({"db": db_block, "repo": repo_block})],
                         env={**os.environ, "PREFECT_API_URL": api_url}, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=50, help="pgbench scale (50: about 1 GB in all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reuse", metavar="DIR", help="keep the cluster in DIR and reuse it on the next run")
    ap.add_argument("--also-scale", type=float, default=0, help="also run the flow on a database this big (RSS)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_run(args.child)
        return 0

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    from pydantic import SecretStr

    from pgkeeper import pgtools
    from pgkeeper.blocks import BackupRepository, PostgresConnection

    with bench_cluster(args.reuse, "pgkeeper-bench-backup-") as (cluster, work):
        build(cluster, args.scale)
        env = cluster.libpq_env(SOURCE_DB)
        with prefect_test_harness(server_startup_timeout=120):
            api = PREFECT_API_URL.value()
            PostgresConnection(host=cluster.host, port=cluster.port, user="postgres", password=SecretStr(PASSWORD),
                               database=SOURCE_DB).save("bench-db", overwrite=True)
            BackupRepository(path=str(work / "repo")).save("bench-repo", overwrite=True)
            # The same flow with client-side encryption (age to a throwaway public key).
            from pgkeeper.sealing import generate_identity

            BackupRepository(path=str(work / "repo-sealed"), encryption="age",
                             encryption_recipients=[generate_identity()[1]]).save("bench-sealed", overwrite=True)
            a_s, b_s, c, e = [], [], [], []
            bare_file = work / "bare.dump"
            for i in range(args.rounds):
                with open(os.devnull, "wb") as null:
                    a_s.append(timed([pgtools.tool("pg_dump"), "-Fc", "-Z0", "-w"], env, stdout=null))
                b_s.append(timed([pgtools.tool("pg_dump"), "-Fc", "-w", "-f", str(bare_file)], env))
                c.append(flow_in_child(api, "bench-db", "bench-repo"))
                e.append(flow_in_child(api, "bench-db", "bench-sealed"))
                print(f"round {i + 1}: raw floor {a_s[-1]:.2f} s, pg_dump -Fc {b_s[-1]:.2f} s, "
                      f"flow body {c[-1]['body_s']:.2f} s (run {c[-1]['flow_s']:.2f} s), "
                      f"encrypted {e[-1]['body_s']:.2f} s", flush=True)
            small = None
            if args.also_scale:
                small_db = SOURCE_DB + "_small"
                import psycopg

                with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {small_db}")
                    conn.execute(f"CREATE DATABASE {small_db}")
                subprocess.run([pgtools.tool("pgbench"), "-i", "-q", "-s", str(int(args.also_scale)), small_db],
                               env={**os.environ, **cluster.libpq_env(small_db)}, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                PostgresConnection(host=cluster.host, port=cluster.port, user="postgres",
                                   password=SecretStr(PASSWORD), database=small_db).save("bench-small", overwrite=True)
                small = flow_in_child(api, "bench-small", "bench-repo")

        a, b = med(a_s), med(b_s)
        body, run = med([x["body_s"] for x in c]), med([x["flow_s"] for x in c])
        size_b, size_c = bare_file.stat().st_size, c[-1]["size"]
        peak = max(x["rss_peak_kb"] for x in c) / 1024
        data_path = max(x["rss_peak_kb"] - x["rss_import_kb"] for x in c) / 1024
        print()
        print(f"database: {SOURCE_DB}, raw dump {c[-1]['raw'] / 2**20:.0f} MB, {args.rounds} rounds (medians)")
        print(f"  a. pg_dump -Fc -Z0 > /dev/null   {a:7.2f} s")
        print(f"  b. pg_dump -Fc -f file           {b:7.2f} s   {size_b / 2**20:7.1f} MB")
        print(f"  c. backup flow body              {body:7.2f} s   {size_c / 2**20:7.1f} MB")
        print(f"     whole flow run                {run:7.2f} s   (+ {med([x['import_s'] for x in c]):.2f} s imports)")
        sealed_body = med([x["body_s"] for x in e])
        print(f"  e. backup flow body, encrypted   {sealed_body:7.2f} s   {e[-1]['size'] / 2**20:7.1f} MB")
        print(f"  e/c = {sealed_body / body:.2f}  (what client-side encryption costs the backup)")
        print(f"  c/a = {body / a:.2f}  (target <= 1.35)")
        print(f"  c/b = {body / b:.2f}  (target <= 0.50)")
        print(f"  size c/b = {size_c / size_b:.2f}  (target <= 0.90)")
        print(f"  peak RSS of the flow process: {peak:.0f} MB ({data_path:.0f} MB above the imports)")
        print(f"  fixed Prefect overhead per run: {run - body:.2f} s")
        if small:
            print(f"  at pgbench scale {args.also_scale:g}: peak RSS {small['rss_peak_kb'] / 1024:.0f} MB "
                  f"({(small['rss_peak_kb'] - small['rss_import_kb']) / 1024:.0f} MB above the imports), "
                  f"raw dump {small['raw'] / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

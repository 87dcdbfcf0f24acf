"""Restore: the restore flow's work against a bare `pg_restore -j2`, same dump, same run.

    .venv/bin/python benchmarks/restore.py [--scale 50] [--rounds 3] [--jobs 2] [--reuse DIR]

A throwaway PostgreSQL 15 cluster gets a database of about 1 GB at the default scale
(pgbench -i -s 50, plus a table of text and jsonb), which the backup flow backs up once. The
stored backup is decompressed (checksum-checked) to one work file, and then, alternating:
  1. bare: CREATE DATABASE + `pg_restore -j2 --no-owner --no-privileges --exit-on-error`;
  2. flow: what the restore flow does after its fetch, as Prefect tasks in a flow: shadow
     database shaped as the backup's, pg_restore -j2 into it (owners and grants), its settings,
     row counts against the manifest, its content proven against the archive (pg_dump of the
     shadow equal to the archive, entry by entry), the one-transaction swap, the swap checked.
Medians of each are compared. Target: flow <= 1.15x bare. One full `restore` flow run (fetch,
readable check and all) is timed at the end for reference.

--reuse DIR keeps the cluster (and its database) in DIR between runs, so the build is paid once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_db import PASSWORD, SOURCE_DB, bench_cluster, build  # noqa: E402

TARGET_DB = "bench_target"


def bare_restore(cluster, dump: Path, jobs: int) -> float:
    import psycopg

    from pgkeeper import pgtools

    name = "bench_bare"
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
    started = time.monotonic()
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    subprocess.run([pgtools.tool("pg_restore"), "-w", "--exit-on-error", f"--jobs={jobs}", f"--dbname={name}",
                    "--no-owner", "--no-privileges", str(dump)],
                   env={**os.environ, **cluster.libpq_env(name)}, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(f"DROP DATABASE {name}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=50, help="pgbench scale (50: about 1 GB in all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--reuse", metavar="DIR", help="keep the cluster in DIR and reuse it on the next run")
    args = ap.parse_args()

    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness
    from pydantic import SecretStr

    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.tasks.pg_restore import materialize_dump
    from pgkeeper.tasks.restore_steps import (
        RestorePlan,
        check_content,
        check_counts,
        plan_restore,
        prepare_shadow,
        restore_shadow,
    )
    from pgkeeper.tasks.swap import check_swapped, drop_if_exists, swap_into_place

    @flow(name="restore-bench-work", validate_parameters=False)  # local types: nothing to validate
    def flow_work(conn: PostgresConnection, plan: RestorePlan, work_file: Path, jobs: int) -> str | None:
        # The restore flow's steps after its fetch, in its order (the old copy is kept by default).
        prepare_shadow(conn, plan)
        restore_shadow(conn, plan, work_file, jobs, 6 * 3600)
        check_counts(conn, plan.shadow, plan)
        check_content(conn, plan.shadow, plan, work_file)
        swap = swap_into_place(conn, plan.target, plan.shadow, plan.retire_as, plan.backup_id, 0)
        check_swapped(conn, swap, len(plan.tables))
        return swap.retired_as

    with bench_cluster(args.reuse, "pgkeeper-bench-restore-") as (cluster, work):
        build(cluster, args.scale)
        conn = PostgresConnection(host=cluster.host, port=cluster.port, user="postgres",
                                  password=SecretStr(PASSWORD), database=SOURCE_DB)
        repo = BackupRepository(path=str(work / "repo"))
        with prefect_test_harness(server_startup_timeout=120):
            from pgkeeper.flows.backup import backup
            from pgkeeper.flows.restore import restore

            os.environ.update({"POSTGRES_HOST": cluster.host, "POSTGRES_PORT": str(cluster.port),
                               "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": PASSWORD,
                               "POSTGRES_DB": SOURCE_DB, "BACKUP_DIR": repo.path})
            t0 = time.monotonic()
            manifest = backup(connection_block="none", repository_block="none")
            print(f"backup {manifest.backup_id}: {manifest.size / 2**20:.0f} MB stored, "
                  f"{sum(manifest.tables.values())} rows, {time.monotonic() - t0:.1f} s")
            dump = work / "dump.fc"
            with repo.storage().open_plain(manifest.backup_id, manifest.dump_file) as stream:
                materialize_dump(stream, manifest.dump_file, manifest.compression, dump, "bench")
            print(f"work file: {dump.stat().st_size / 2**20:.0f} MB")
            # The target exists, as in a real replace; the first flow round also warms the cache.
            drop_if_exists(conn, TARGET_DB)  # left by an earlier --reuse run
            plan = plan_restore(conn, repo, manifest.backup_id, "local", "new", TARGET_DB)
            flow_work(conn, plan, dump, args.jobs)

            bare_s, flow_s = [], []
            for i in range(args.rounds):
                bare_s.append(bare_restore(cluster, dump, args.jobs))
                plan = plan_restore(conn, repo, manifest.backup_id, "local", "replace", TARGET_DB)
                t = time.monotonic()
                old = flow_work(conn, plan, dump, args.jobs)
                flow_s.append(time.monotonic() - t)
                if old:
                    drop_if_exists(conn, old)  # not timed, as the bare database's drop is not
                print(f"round {i + 1}: bare pg_restore -j{args.jobs} {bare_s[-1]:.2f} s, "
                      f"restore flow work {flow_s[-1]:.2f} s")

            t = time.monotonic()
            report = restore(manifest.backup_id, target=TARGET_DB, confirmed=True, safety_backup=False,
                             keep_old=False, jobs=args.jobs, connection_block="none", repository_block="none")
            full = time.monotonic() - t
        bare_m, flow_m = statistics.median(bare_s), statistics.median(flow_s)
        print(f"median bare pg_restore -j{args.jobs}: {bare_m:.2f} s")
        print(f"median restore flow work (shadow, checks, swap): {flow_m:.2f} s")
        print(f"ratio flow/bare: {flow_m / bare_m:.3f}x (target <= 1.15x)")
        print(f"full restore flow (fetch + checksum + readable check + the above): {full:.2f} s, "
              f"RTO reported {report.rto_seconds:.2f} s ({full / bare_m:.2f}x bare)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

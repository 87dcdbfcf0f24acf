"""Verify's restore drill: proving content against counting rows, same archive, same run.

    .venv/bin/python benchmarks/verify_drill.py [--scale 50] [--rounds 3] [--jobs 2] [--reuse DIR]

The benchmark database (pgbench -i -s SCALE plus a table of text and jsonb, about 1 GB at 50) is
backed up once by the backup flow and its archive decompressed to a work file. Then, alternating:
  1. count-only: what the drill did before it proved content: CREATE DATABASE from template0,
     `pg_restore -j2 --no-owner --no-privileges`, exact row counts, DROP DATABASE;
  2. content: the drill as it is now (the restore_drill task): the scratch database shaped as
     the backup's, pg_restore with owners and grants, the database's settings, row counts, and
     pg_dump of the scratch compared entry by entry with the archive read as SQL (schema, grants
     and data; the archive is read while pg_restore runs), then DROP DATABASE.
Medians are compared. Target: content <= 1.5x count-only.
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
from bench_db import PASSWORD, SOURCE_DB, bench_cluster, build, use_own_home  # noqa: E402


def count_only_drill(cluster, conn, dump: Path, jobs: int) -> float:
    import psycopg

    from pgkeeper import pgtools
    from pgkeeper.pgdb import count_database

    name = "bench_drill_counts"
    started = time.monotonic()
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    subprocess.run([pgtools.tool("pg_restore"), "-w", "--exit-on-error", f"--jobs={jobs}", f"--dbname={name}",
                    "--no-owner", "--no-privileges", str(dump)],
                   env={**os.environ, **cluster.libpq_env(name)}, check=True, stdout=subprocess.DEVNULL)
    count_database(conn, name)
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(f"DROP DATABASE {name}")
    return time.monotonic() - started


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
    from pgkeeper.manifest import Manifest
    from pgkeeper.tasks.drill import restore_drill
    from pgkeeper.workfile import materialize_dump

    @flow(name="drill-bench", validate_parameters=False)
    def content_drill(conn: PostgresConnection, dump: Path, jobs: int, manifest: Manifest,
                      repo: BackupRepository) -> list[str]:
        return restore_drill(conn, str(dump), "bench_drill_content", jobs, 6 * 3600, manifest, repo).differences

    with bench_cluster(args.reuse, "pgkeeper-bench-drill-") as (cluster, work):
        use_own_home(work / "home")  # its repository is in `work` too, gone afterwards
        build(cluster, args.scale)
        conn = PostgresConnection(host=cluster.host, port=cluster.port, user="postgres",
                                  password=SecretStr(PASSWORD), database=SOURCE_DB)
        repo = BackupRepository(path=str(work / "repo"))
        with prefect_test_harness(server_startup_timeout=120):
            from pgkeeper.flows.backup import backup

            os.environ.update({"POSTGRES_HOST": cluster.host, "POSTGRES_PORT": str(cluster.port),
                               "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": PASSWORD,
                               "POSTGRES_DB": SOURCE_DB, "BACKUP_DIR": repo.path})
            manifest = backup(connection_block="none", repository_block="none")
            print(f"backup {manifest.backup_id}: {manifest.size / 2**20:.0f} MB stored, "
                  f"{sum(manifest.tables.values())} rows")
            dump = work / "dump.fc"
            with repo.storage().open_plain(manifest.backup_id, manifest.dump_file) as stream:
                materialize_dump(stream, manifest.dump_file, manifest.compression, dump, "bench")
            print(f"work file: {dump.stat().st_size / 2**20:.0f} MB")
            counts_s, content_s = [], []
            for i in range(args.rounds):
                counts_s.append(count_only_drill(cluster, conn, dump, args.jobs))
                t = time.monotonic()
                differences = content_drill(conn, dump, args.jobs, manifest, repo)
                content_s.append(time.monotonic() - t)
                assert differences == [], differences
                print(f"round {i + 1}: count-only drill {counts_s[-1]:.2f} s, content drill {content_s[-1]:.2f} s")
        counts_m, content_m = statistics.median(counts_s), statistics.median(content_s)
        print(f"count-only drill: median {counts_m:.2f} s (min {min(counts_s):.2f}, max {max(counts_s):.2f})")
        print(f"content drill:    median {content_m:.2f} s (min {min(content_s):.2f}, max {max(content_s):.2f})")
        print(f"ratio content/count-only: {content_m / counts_m:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

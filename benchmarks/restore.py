"""Restore: whole `pgkeeper restore` processes against a bare `pg_restore -j2`, same dump, alternating.

    .venv/bin/python benchmarks/restore.py [--scale 50] [--rounds 3] [--jobs 2] [--reuse DIR] [--cold]

A throwaway PostgreSQL 15 cluster gets a database of about 1 GB at the default scale
(pgbench -i -s 50, plus a table of text and jsonb, see bench_db.py), which the backup flow backs
up once. The peer's input is that backup's dump, decompressed to a file (what a user of bare
tools would have). Then each round times, one after the other:
  1. bare:    CREATE DATABASE + `pg_restore -j2 --exit-on-error` of the dump file
              (the peer a user would pick);
  2. into:    the whole `pgkeeper restore ID --into NEW -j 2` process, against a running Prefect
              API: fetch (checksum, decompress), readable check, shadow, pg_restore -j2, settings,
              row counts, content proof (pg_dump of the shadow equal to the archive), rename;
  3. replace: the whole `pgkeeper restore ID --target bench_target --yes -j 2` process: the same,
              plus the one-transaction swap; the previous database is kept, as by default, and
              its safety backup (1 GB, the same data) is started as a process of its own that the
              command does not wait for: the database is back in service when the command ends.
              The benchmark waits for that backup to be listed and prints how long after the
              command it was (not in the ratio); then the kept copy is dropped, untimed, as the
              bare run's database is.
Before each timed contest, untimed: the replace target vacuumed and analyzed and a CHECKPOINT
(settle), so that no contest pays for the autovacuum or checkpoint of the one before it.
It prints each contest's median, min and max, the ratios of the medians to bare, and each
contest's CPU-seconds (benchmarks/cpu_tree.py) with the least wall time they allow on this
machine's cores.
Targets (issue 18, target 4): into <= 1.1x, replace <= 1.3x.

What is compared: the peer restores the backup's dump as stored (`pg_dump -Fc -Z0` written to a
pipe, decompressed), what a user of bare tools would have. Written to a pipe, its table of
contents has no data offsets, so each `pg_restore -j` worker scans block headers to find its
table's data (pg_backup_custom.c, K_OFFSET_POS_NOT_SET). pgkeeper restores the same archive with
the offsets written into its TOC once its checksum is proven (pgkeeper/dumpoffsets.py; the
result is the file `pg_dump -Fc -f FILE` writes), so it no longer pays that scan.
--with-offsets adds a third timing per round: the peer restoring `pg_dump -Fc -Z0 -f FILE` of the
same database (offsets in its TOC), what a user who dumps to a file has; the ratios to it are
printed too, and they are the stricter contest now that pgkeeper restores with offsets.

The content proof's archive side (pg_restore's SQL of the archive, hashed) is kept per stored
dump on the host that read it (pgkeeper/archive_digests.py); in service the verify drill that
follows every backup reads it first. So the benchmark runs that drill once, untimed, before the
rounds. --cold skips it and forgets the kept side before every pgkeeper restore: a host that never
proved this backup, each restore reading the archive as SQL beside its shadow restore.

--reuse DIR keeps the cluster (with its database) and the repository (with the backup) in DIR
between runs, so the build and the backup are paid once.
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
from bench_db import PASSWORD, SOURCE_DB, bench_cluster, build, machine_phase, use_own_home  # noqa: E402

TARGET_DB = "bench_target"  # what replace mode replaces (a copy of the source at first)
INTO_DB = "bench_into"  # what --into creates
BARE_DB = "bench_bare"


def admin(cluster, statement: str) -> None:
    import psycopg

    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(statement)


def settle(cluster, kept: str | None = None) -> None:
    """Between contests, untimed: the database a contest leaves (`kept`) vacuumed and analyzed, as
    autovacuum would do a minute later, and a checkpoint, so that neither the autovacuum of 5
    million new rows nor a checkpoint of the last restore's writes falls into the next contest's
    time and CPU."""
    import psycopg

    if kept:
        with psycopg.connect(cluster.conninfo(kept), autocommit=True) as c:
            c.execute("VACUUM (ANALYZE)")
    admin(cluster, "CHECKPOINT")


def bare_restore(cluster, dump: Path, jobs: int) -> float:
    from pgkeeper import pgtools

    admin(cluster, f"DROP DATABASE IF EXISTS {BARE_DB}")
    started = time.monotonic()
    admin(cluster, f"CREATE DATABASE {BARE_DB}")
    subprocess.run([pgtools.tool("pg_restore"), "-w", "--exit-on-error", f"--jobs={jobs}", f"--dbname={BARE_DB}",
                    str(dump)], env={**os.environ, **cluster.libpq_env(BARE_DB)}, check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    admin(cluster, f"DROP DATABASE {BARE_DB}")
    return seconds


def pgkeeper_restore(env: dict[str, str], args: list[str]) -> tuple[float, str]:
    """One whole `pgkeeper restore` process, as a user runs it; its wall-clock seconds and output."""
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pgkeeper.cli.main", "restore", *args], env=env, cwd=ROOT,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"pgkeeper restore {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return seconds, out.stdout


def safety_backup_seconds(stdout: str, timeout: float = 600) -> float:
    """Wait for the safety backup a replace left running as a process of its own; seconds waited.
    Its log file (in the pgkeeper home) is removed: nothing of the benchmark's stays behind."""
    import re

    from tests.helpers import alive

    found = re.search(r"running on as process (\d+), .*; log: (\S+)", stdout)
    if not found:
        raise SystemExit(f"pgkeeper restore started no safety backup:\n{stdout[-2000:]}")
    started = time.monotonic()
    while alive(int(found[1])):
        if time.monotonic() - started > timeout:
            raise SystemExit(f"the safety backup (process {found[1]}) did not end within {timeout:.0f} s")
        time.sleep(0.1)
    waited = time.monotonic() - started
    Path(found[2]).unlink(missing_ok=True)
    return waited


def old_copies(cluster, target: str) -> list[str]:
    import psycopg

    with psycopg.connect(cluster.conninfo()) as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                        (target + "_pre_restore_%",)).fetchall()]


def steps_of_last_run() -> str:
    """Where the last restore run's time went: its tasks' durations (overlapping ones included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["restore"])),
                                      sort=FlowRunSort.START_TIME_DESC, limit=1)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    parts = []
    for t in sorted(tasks, key=lambda t: t.start_time or run.start_time):
        if t.start_time and t.end_time and run.start_time:
            parts.append(f"{t.name.rsplit('-', 1)[0]} +{(t.start_time - run.start_time).total_seconds():.1f} "
                         f"{(t.end_time - t.start_time).total_seconds():.1f}s")
    return f"    run {run.total_run_time.total_seconds():.1f} s: " + ", ".join(parts)


def stats(xs: list[float]) -> str:
    return f"median {statistics.median(xs):7.2f} s   min {min(xs):7.2f} s   max {max(xs):7.2f} s"


def main() -> int:
    from measure import compile_package

    compile_package(ROOT)  # pgkeeper as installed: its modules' bytecode compiled (measure.py)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=50, help="pgbench scale (50: about 1 GB in all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--reuse", metavar="DIR", help="keep the cluster and the repository in DIR for the next run")
    ap.add_argument("--steps", action="store_true", help="print each restore run's task durations (profiling)")
    ap.add_argument("--with-offsets", action="store_true",
                    help="also time the peer on a `pg_dump -Fc -Z0 -f FILE` archive (with data offsets)")
    ap.add_argument("--cold", action="store_true",
                    help="no verify drill first, and the proof's kept archive side forgotten before every "
                         "pgkeeper restore (a host that never proved this backup)")
    args = ap.parse_args()

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.catalog import list_backups
    from pgkeeper.workfile import materialize_dump

    with bench_cluster(args.reuse, "pgkeeper-bench-restore-") as (cluster, work):
        use_own_home(Path(args.reuse, "home") if args.reuse else work / "home")
        build(cluster, args.scale)
        repo_dir = Path(args.reuse, "repo") if args.reuse else work / "repo"
        repo_dir.mkdir(parents=True, exist_ok=True)
        for name in [INTO_DB, BARE_DB, *old_copies(cluster, TARGET_DB)]:  # left by an interrupted run
            admin(cluster, f"DROP DATABASE IF EXISTS {name}")
        admin(cluster, f"DROP DATABASE IF EXISTS {TARGET_DB}")
        admin(cluster, f"CREATE DATABASE {TARGET_DB} TEMPLATE {SOURCE_DB}")  # replace mode's live database
        with prefect_test_harness(server_startup_timeout=300):
            env = {**os.environ, "POSTGRES_HOST": cluster.host, "POSTGRES_PORT": str(cluster.port),
                   "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": SOURCE_DB,
                   "BACKUP_DIR": str(repo_dir), "PREFECT_API_URL": PREFECT_API_URL.value(),
                   "PGKEEPER_WORK_DIR": str(work)}
            os.environ.update({k: env[k] for k in ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER",
                                                   "POSTGRES_PASSWORD", "POSTGRES_DB", "BACKUP_DIR")})
            storage = BackupRepository(path=str(repo_dir)).storage()
            kept = [m for m in list_backups(storage, SOURCE_DB, kind="logical") if "pre-restore" not in m.labels]
            if kept:
                manifest = kept[-1]
                print(f"reusing backup {manifest.backup_id}: {manifest.size / 2**20:.0f} MB stored")
            else:
                from pgkeeper.flows.backup import backup

                t0 = time.monotonic()
                manifest = backup(connection_block="none", repository_block="none")
                print(f"backup {manifest.backup_id}: {manifest.size / 2**20:.0f} MB stored, "
                      f"{sum(manifest.tables.values())} rows, {time.monotonic() - t0:.1f} s")
            # The proof's archive side is kept per stored dump on the host that read it
            # (pgkeeper/archive_digests.py). In service the verify drill that follows every backup
            # reads it first; the benchmark does the same, once and untimed, after forgetting what an
            # earlier run kept. --cold forgets it before every pgkeeper restore instead.
            from pgkeeper import archive_digests
            from pgkeeper.flows.verify import verify

            sha = manifest.dump_file.sha256
            archive_digests.forget(sha)
            if not args.cold:
                t0 = time.monotonic()
                verify(backup=manifest.backup_id, connection_block="none", repository_block="none")
                print(f"verify drill of the backup (untimed, as the service runs after each backup): "
                      f"{time.monotonic() - t0:.1f} s")
            dump = work / "dump.fc"
            with storage.open_plain(manifest.backup_id, manifest.dump_file) as stream:
                materialize_dump(stream, manifest.dump_file, manifest.compression, dump, "bench")
            print(f"dump file for the peer: {dump.stat().st_size / 2**20:.0f} MB", flush=True)
            with_offsets = work / "offsets.fc"
            if args.with_offsets:
                from pgkeeper import pgtools

                subprocess.run([pgtools.tool("pg_dump"), "-w", "-Fc", "-Z0", "-f", str(with_offsets)],
                               env={**os.environ, **cluster.libpq_env(SOURCE_DB)}, check=True)

            from cpu_tree import CpuMeter

            meter = CpuMeter(cluster.datadir)
            cpu: dict[str, list[float]] = {"bare": [], "into": [], "replace": []}

            def timed(contest: str, run, *run_args):  # noqa: ANN001, ANN202
                settle(cluster, TARGET_DB)
                meter.start()
                result = run(*run_args)
                cpu[contest].append(meter.stop())
                return result

            bare_s: list[float] = []
            into_s: list[float] = []
            replace_s: list[float] = []
            safety_s: list[float] = []
            offsets_s: list[float] = []
            jobs = str(args.jobs)
            for i in range(args.rounds):
                bare_s.append(timed("bare", bare_restore, cluster, dump, args.jobs))
                if args.with_offsets:
                    offsets_s.append(bare_restore(cluster, with_offsets, args.jobs))
                if args.cold:
                    archive_digests.forget(sha)
                into_s.append(timed("into", pgkeeper_restore, env,
                                    [manifest.backup_id, "--into", INTO_DB, "-j", jobs])[0])
                if args.steps:
                    print(steps_of_last_run(), flush=True)
                admin(cluster, f"DROP DATABASE {INTO_DB}")  # untimed, as the bare database's drop
                if args.cold:
                    archive_digests.forget(sha)
                seconds, out = timed("replace", pgkeeper_restore, env,
                                     [manifest.backup_id, "--target", TARGET_DB, "--yes", "-j", jobs])
                replace_s.append(seconds)
                safety_s.append(safety_backup_seconds(out))  # the database was in service meanwhile
                if args.steps:
                    print(steps_of_last_run(), flush=True)
                for name in old_copies(cluster, TARGET_DB):
                    admin(cluster, f"DROP DATABASE {name}")
                offsets = f" (archive with offsets {offsets_s[-1]:.2f} s)" if offsets_s else ""
                print(f"round {i + 1}: bare pg_restore -j{jobs} {bare_s[-1]:.2f} s{offsets}, "
                      f"--into {into_s[-1]:.2f} s, replace {replace_s[-1]:.2f} s (its safety backup listed "
                      f"{safety_s[-1]:.2f} s later); {machine_phase()}", flush=True)
            admin(cluster, f"DROP DATABASE {TARGET_DB}")
            archive_digests.forget(sha)  # nothing of the benchmark's left in the pgkeeper home

        bare_m = statistics.median(bare_s)
        print()
        side = "read anew by each restore (--cold)" if args.cold else "kept from the verify drill"
        print(f"{args.rounds} rounds, pgbench scale {args.scale:g}, dump {dump.stat().st_size / 2**20:.0f} MB, "
              f"the proof's archive side {side}")
        print(f"  bare CREATE DATABASE + pg_restore -j{jobs}:  {stats(bare_s)}")
        if offsets_s:
            print(f"  the same, archive with data offsets:     {stats(offsets_s)} "
                  f"({statistics.median(offsets_s) / bare_m:.2f}x bare)")
        print(f"  pgkeeper restore --into NEW:               {stats(into_s)}")
        print(f"  pgkeeper restore (replace):                {stats(replace_s)}")
        print(f"  its safety backup, after the command:      {stats(safety_s)} (not in the ratio)")
        print(f"  ratio --into / bare:  {statistics.median(into_s) / bare_m:.2f}x (target <= 1.1x)")
        print(f"  ratio replace / bare: {statistics.median(replace_s) / bare_m:.2f}x (target <= 1.3x)")
        # CPU-seconds of everything each contest ran (the command's process tree, the cluster's
        # backends, the Prefect server): on this machine's cores they bound its wall time from below.
        cores = os.cpu_count() or 1
        print(f"  CPU-seconds (command, server backends and Prefect API; median), and the least wall time "
              f"they allow on {cores} cores, as a ratio to bare:")
        for contest in ("bare", "into", "replace"):
            used = statistics.median(cpu[contest])
            print(f"    {contest:8s} {used:6.1f} CPU-s  -> at least {used / cores / bare_m:.2f}x")
        if offsets_s:
            offsets_m = statistics.median(offsets_s)
            print(f"  ratio --into / archive with offsets:  {statistics.median(into_s) / offsets_m:.2f}x")
            print(f"  ratio replace / archive with offsets: {statistics.median(replace_s) / offsets_m:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

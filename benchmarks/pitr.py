"""PITR to the end of the WAL: `pgkeeper pitr --latest` against `pgbackrest restore` + replay.

    .venv/bin/python benchmarks/pitr.py [--scale 20] [--wal-mb 1500] [--rounds 3]

One cluster archives every WAL file into both archives (archive_command runs wal-push, then
pgbackrest archive-push), so both tools replay the same WAL. Each tool takes a base backup
(pgkeeper base-backup; pgbackrest backup --type=full, zst, process-max 2), then updates of pgbench's
accounts table write --wal-mb of WAL after them. Then, alternately, --rounds times:
  pgkeeper:   `pgkeeper pitr --latest` into a new directory (its wal-fetch prefetches ahead);
  pgBackRest: `pgbackrest restore` into a new pg1-path (no delta), archive-async=y (its
              archive-get prefetches), pg_ctl start, replay to the end;
each timed until the recovered server accepts connections and is out of recovery (promoted).
Both recovered copies run with archive_mode off, so neither writes into the archives.
Prints medians, min, max and the ratio pgkeeper / pgBackRest (target: <= 1.1).
The Prefect server pgkeeper's flows talk to is started (and stopped) by the benchmark, before
the first timed round, in a PGKEEPER_HOME of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_db import machine_phase  # noqa: E402
from pgbackrest_peer import PgBackRest, ensure_installed  # noqa: E402

from pgkeeper import pgtools  # noqa: E402
from pgkeeper.localcluster import LocalCluster, free_port, scratch_dir  # noqa: E402
from pgkeeper.wal.command import archive_command, conf_quote  # noqa: E402
from pgkeeper.wal.config import WalConfig  # noqa: E402
from pgkeeper.wal.setup import write_config  # noqa: E402

PASSWORD = "bench-pw"


def pgkeeper_cli(*args: str, env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, "-m", "pgkeeper.cli.main", *args], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pgkeeper {args[0]} failed ({r.returncode}):\n{r.stdout[-3000:]}")


def generate_wal(cluster: LocalCluster, megabytes: int) -> None:
    """Update pgbench's accounts in slices until `megabytes` of WAL were written (pgbench's own
    TPC-B transactions write WAL too slowly on a small shared machine); then wait until both
    archives have it."""
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        start = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        began, n = time.monotonic(), 0
        while True:
            c.execute("UPDATE pgbench_accounts SET abalance = abalance + 1, filler = md5(random()::text) "
                      "WHERE aid %% 8 = %s", (n % 8,))
            n += 1
            done = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)).fetchone()[0]
            if n % 4 == 0:
                print(f"  {done / 2**20:.0f} MB of WAL written ({time.monotonic() - began:.0f} s)", flush=True)
            if done >= megabytes * 2**20:
                break
        c.execute("SELECT pg_switch_wal()")
        last = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn() - 1)").fetchone()[0]
        while True:
            archived, failed = c.execute("SELECT last_archived_wal, failed_count FROM pg_stat_archiver").fetchone()
            if archived and archived[:24] >= last:
                break
            time.sleep(0.5)
        if failed:
            print(f"  note: {failed} failed archive calls")
    print(f"  {done / 2**20:.0f} MB of WAL archived by both tools, up to {last}")


def wait_promoted(port: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=postgres password={PASSWORD} connect_timeout=2"
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(conninfo) as c:
                if not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server on port {port} did not promote in {timeout} s")


def replay_seconds(log: Path) -> float | None:
    """The redo's elapsed time as the recovered server logs it ('redo done ... elapsed: N s'): the
    part of the run that restore_command is in."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    done = [ln for ln in lines if "redo done at" in ln and "elapsed:" in ln]
    if not done:
        return None
    return float(done[-1].rsplit("elapsed:", 1)[1].strip().split()[0])


def stop_and_remove(datadir: Path) -> None:
    if (datadir / "postmaster.pid").exists():
        subprocess.run([*pgtools.as_server_user(), pgtools.tool("pg_ctl"), "-D", str(datadir), "-m", "immediate",
                        "-w", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(datadir, ignore_errors=True)


def run_pgkeeper(base: Path, repo: Path, env: dict[str, str], n: int) -> tuple[float, float | None]:
    into, port = base / f"pk-{n}", free_port()
    started = time.perf_counter()
    pgkeeper_cli("pitr", "--latest", "--data-dir", str(into), "--port", str(port), "--backup-dir", str(repo),
                 env=env)
    wait_promoted(port)
    took = time.perf_counter() - started
    log = into / "log" / "pgkeeper-pitr.log"
    redo = replay_seconds(log)
    if os.environ.get("PITR_BENCH_KEEP_LOGS"):
        shutil.copy(log, Path(os.environ["PITR_BENCH_KEEP_LOGS"]) / f"pk-{n}.log")
    leftovers = [p.name for p in base.iterdir() if "pgkeeper-recovery" in p.name]
    if leftovers:
        raise SystemExit(f"pgkeeper pitr left {leftovers} behind")
    stop_and_remove(into)
    return took, redo


def run_pgbackrest(peer: PgBackRest, base: Path, n: int) -> tuple[float, float | None]:
    into, port = base / f"pb-{n}", free_port()
    pgtools.make_server_dir(into)
    started = time.perf_counter()
    peer.run("restore", f"--pg1-path={into}")
    with open(into / "postgresql.auto.conf", "a") as f:
        f.write(f"port = {port}\narchive_mode = 'off'\n")
    log = base / f"pb-{n}.log"
    log.touch()
    pgtools.give_to_server_user(log)
    subprocess.run([*pgtools.as_server_user(), pgtools.tool("pg_ctl"), "-D", str(into), "-l", str(log),
                    "-o", f"-p {port}", "start"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_promoted(port)
    took = time.perf_counter() - started
    redo = replay_seconds(log)
    if os.environ.get("PITR_BENCH_KEEP_LOGS"):
        shutil.copy(log, Path(os.environ["PITR_BENCH_KEEP_LOGS"]) / f"pb-{n}.log")
    stop_and_remove(into)
    return took, redo


def stop_prefect_server(home: Path) -> None:
    pid_file = home / "prefect-server" / "server.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), 15)
        except (ProcessLookupError, ValueError, PermissionError):
            pass


def main() -> None:
    from measure import compile_package

    compile_package(ROOT)  # pgkeeper as installed: its modules' bytecode compiled (measure.py)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=20, help="pgbench scale of the database")
    ap.add_argument("--wal-mb", type=int, default=1500, help="WAL written after the base backups")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ensure_installed()

    base = scratch_dir("pgkeeper-pitrbench-")
    home = base / "pgkeeper-home"
    env = {**os.environ, "PGKEEPER_HOME": str(home), "PGKEEPER_SERVER_PORT": str(free_port()),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
           "POSTGRES_PASSWORD": PASSWORD}
    env.pop("PREFECT_API_URL", None)
    repo = base / "repo"
    repo.mkdir(mode=0o755)
    config = write_config(base / "wal.json", WalConfig(spool=str(repo / "wal")))
    cluster = LocalCluster(base / "data", password=PASSWORD)
    peer = PgBackRest(cluster, base / "pgbackrest", archive_async=True)
    try:
        cluster.init({"shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "15min",
                      "wal_level": "replica", "archive_mode": "on", "log_line_prefix": "'%m [%p] '"})
        peer.prepare_cluster()
        both = f"{archive_command(config)} && {peer.archive_command()[1:-1]}"
        cluster.write_conf({"archive_command": conf_quote(both)})
        cluster.start()
        peer.run("stanza-create")
        print(f"pgbench -i -s {args.scale}", flush=True)
        subprocess.run([pgtools.tool("pgbench"), "-i", "-q", "-s", str(args.scale)],
                       env={**os.environ, **cluster.libpq_env()}, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        print("starting the Prefect server pgkeeper's flows use (not timed)", flush=True)
        os.environ.update(PGKEEPER_HOME=env["PGKEEPER_HOME"], PGKEEPER_SERVER_PORT=env["PGKEEPER_SERVER_PORT"])
        from pgkeeper.local_server import start_local_server

        start_local_server(timeout=1200)
        print("base backups (pgkeeper base-backup; pgbackrest backup --type=full)", flush=True)
        pgkeeper_cli("base-backup", "--host", cluster.host, "--port", str(cluster.port), "--user", "postgres",
                     "--database", "postgres", "--backup-dir", str(repo), "--wal-config", str(config),
                     "--no-verify", env=env)
        peer.run("backup", "--type=full")
        print(f"writing {args.wal_mb} MB of WAL with pgbench", flush=True)
        generate_wal(cluster, args.wal_mb)
        cluster.stop()  # the recoveries alone on the machine (and nothing more archived)

        times: dict[str, list[float]] = {"pgkeeper pitr --latest": [], "pgbackrest restore + replay": []}
        redos: dict[str, list[float]] = {label: [] for label in times}
        for n in range(args.rounds):
            order = list(times) if n % 2 == 0 else list(reversed(times))
            for label in order:
                took, redo = run_pgkeeper(base, repo, env, n) if label.startswith("pgkeeper") else \
                    run_pgbackrest(peer, base, n)
                times[label].append(took)
                if redo is not None:
                    redos[label].append(redo)
                print(f"  round {n + 1}: {label}: {took:.1f} s (redo, from the server's log: {redo} s); "
                      f"{machine_phase()}", flush=True)
        print(f"\nPITR to the end of {args.wal_mb} MB of WAL (scale {args.scale}), {args.rounds} rounds, alternating:")
        print(f"{'':32}{'median':>9}{'min':>9}{'max':>9}")
        for label, xs in times.items():
            print(f"{label:32}{statistics.median(xs):>8.1f}s{min(xs):>8.1f}s{max(xs):>8.1f}s")
        for label, xs in redos.items():
            if xs:
                print(f"{'  of which redo (' + label.split()[0] + ')':32}{statistics.median(xs):>8.1f}s{min(xs):>8.1f}s"
                      f"{max(xs):>8.1f}s")
        pk, pb = (statistics.median(xs) for xs in times.values())
        ratio = pk / pb
        verdict = "PASS" if ratio <= 1.1 else "FAIL"
        print(f"ratio pgkeeper / pgBackRest (medians): {ratio:.2f}x; target <= 1.1x: {verdict}")
    finally:
        cluster.destroy()
        stop_prefect_server(home)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

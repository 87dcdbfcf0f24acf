"""WAL archiving through PostgreSQL's own archiver: wal-push against `cp`, and the RPO.

    .venv/bin/python benchmarks/wal.py [--segments 100] [--archive-timeout 2] [--probes 10]

For each archive_command (cp; dd conv=fsync, which is cp plus the fsync wal-push does;
wal-push one file per call; wal-push with push-ahead, the default):
1. archiving is switched off (archive_command = '') and an insert workload of random text
   writes --segments real 16 MB WAL segments, which queue up as ready files;
2. archive_command is set and the server reloaded: the archiver works through the backlog,
   one command per file, serially, as the postgres OS user, with fsync on.
The server's log (log_min_messages = debug3) gives each call's start and end to the
millisecond; segments/min is files archived over the time from first call to last.
Targets: median <= 80 ms a segment, >= 600 segments/min.
Then, with archive_timeout, single-row commits are timed until pg_stat_archiver reports
their segment archived by wal-push: the RPO.

    .venv/bin/python benchmarks/wal.py --peer [--segments 101] [--rounds 3]

Against the peer instead: wal-push (push-ahead, the default) and pgBackRest 2.45 archive-push
with archive-async=y, process-max 2 (zst, its defaults otherwise; Debian's package, installed
when missing) drain the same kind of backlog alternately, --rounds times each; prints the
medians, min and max of segments/min and the ratio (target: pgkeeper >= 1.5x pgBackRest).
Both fsync what they archive before PostgreSQL is told.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgkeeper.localcluster import LocalCluster, make_server_dir, scratch_dir  # noqa: E402
from pgkeeper.sealing import generate_identity  # noqa: E402
from pgkeeper.wal.command import archive_command, pgkeeper_command  # noqa: E402
from pgkeeper.wal.config import DEFAULT_PUSH_AHEAD, WalConfig  # noqa: E402
from pgkeeper.wal.setup import prepare_spool, write_config  # noqa: E402

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \S+ .*?(executing archive command|"
                   r"archived write-ahead log file \"([^\"]+)\")")


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def set_archiving(c: psycopg.Connection, command: str, log_level: str) -> None:
    c.execute(f"ALTER SYSTEM SET archive_command = {_lit(command)}")
    c.execute(f"ALTER SYSTEM SET log_min_messages = {_lit(log_level)}")
    c.execute("SELECT pg_reload_conf()")


def make_backlog(c: psycopg.Connection, count: int) -> str:
    """Write `count` segments' worth of WAL while archiving is off; the last one's name."""
    start = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    while True:
        c.execute("INSERT INTO load (body, n) SELECT md5(random()::text) || repeat(md5(g::text), 3) "
                  "|| md5(random()::text), g FROM generate_series(1, 100000) g")
        done = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)).fetchone()[0]
        if done > count * 16 * 1024 * 1024:
            break
    last = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
    c.execute("SELECT pg_switch_wal()")
    return last


def drain(cluster: LocalCluster, c: psycopg.Connection, command: str, count: int) -> tuple[list[float], float]:
    """Archive a fresh backlog of `count` segments with `command`: (per-call seconds, segments/min)."""
    set_archiving(c, "", "warning")
    time.sleep(0.5)
    last = make_backlog(c, count)
    log = cluster.datadir.parent / f"postgres-{cluster.port}.log"
    offset = log.stat().st_size
    set_archiving(c, command, "debug3")
    deadline = time.monotonic() + 900
    while True:
        archived, failed = c.execute("SELECT last_archived_wal, failed_count FROM pg_stat_archiver").fetchone()
        if archived and archived[:24] >= last:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{last} not archived by {command!r} (failed_count={failed})")
        time.sleep(0.05)
    set_archiving(c, "", "warning")
    with log.open() as f:
        f.seek(offset)
        calls = _calls(f.read())
    if failed:
        print(f"  note: {failed} failed archive calls so far")
    lat = [end - start for start, end, _ in calls]
    span = calls[-1][1] - calls[0][0]
    return lat, 60 * len(calls) / span


def _calls(text: str) -> list[tuple[float, float, str]]:
    """(start, end, file) of every successful archive call in a debug3 server log."""
    calls, started = [], None
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        if m.group(3) is None:
            started = ts
        elif started is not None:
            calls.append((started, ts, m.group(3)))
            started = None
    return calls


def rpo_probe(c: psycopg.Connection, command: str, archive_timeout: int, probes: int) -> list[float]:
    set_archiving(c, command, "warning")
    c.execute(f"ALTER SYSTEM SET archive_timeout = '{archive_timeout}s'")
    c.execute("SELECT pg_reload_conf()")
    c.execute("SELECT pg_switch_wal()")
    time.sleep(archive_timeout + 1)
    lags = []
    for i in range(probes):
        c.execute("INSERT INTO load (body, n) VALUES ('probe', %s)", (i,))
        committed = time.monotonic()
        seg = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        while True:
            last, failed = c.execute("SELECT last_archived_wal, failed_count FROM pg_stat_archiver").fetchone()
            if last and last[:24] >= seg:
                break
            if time.monotonic() - committed > archive_timeout * 5 + 30:
                raise SystemExit(f"segment {seg} not archived (failed_count={failed})")
            time.sleep(0.02)
        lags.append(time.monotonic() - committed)
        time.sleep((i % 4) * 0.3)
    return lags


def against_peer(segments: int, rounds: int, push_ahead: int) -> None:
    """wal-push and pgbackrest archive-async drain the same backlog size, alternately."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_db import machine_phase
    from pgbackrest_peer import PgBackRest, ensure_installed

    ensure_installed()
    base = scratch_dir("pgkeeper-walpeer-")
    spool = prepare_spool(base / "spool")
    config = write_config(base / "wal.json", WalConfig(spool=str(spool), push_ahead=push_ahead))
    cluster = LocalCluster(base / "data", settings={
        "archive_mode": "on", "archive_command": "''", "max_wal_size": "8GB", "wal_compression": "off",
        "log_line_prefix": "'%m [%p] '"})
    peer = PgBackRest(cluster, base / "pgbackrest", archive_async=True)
    labels = {f"pgkeeper wal-push (push-ahead {push_ahead})": archive_command(config, claim_spool=str(spool)),
              "pgbackrest archive-async, process-max 2": peer.archive_command()[1:-1]}
    rates: dict[str, list[float]] = {label: [] for label in labels}
    try:
        cluster.init().start()
        peer.prepare_cluster()
        peer.run("stanza-create")
        with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
            c.execute("CREATE TABLE load (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), body text, n int)")
            for n in range(rounds):
                order = list(labels) if n % 2 == 0 else list(reversed(labels))
                for label in order:
                    _lat, rate = drain(cluster, c, labels[label], segments)
                    rates[label].append(rate)
                    print(f"  round {n + 1}: {label}: {rate:.0f} segments/min; {machine_phase()}", flush=True)
                    c.execute("TRUNCATE load")
                    c.execute("CHECKPOINT")
        print(f"\nPostgreSQL's archiver draining {segments} ready 16 MB segments, {rounds} rounds, alternating "
              "(segments/min, higher is better):")
        print(f"{'':44}{'median':>9}{'min':>9}{'max':>9}")
        for label, xs in rates.items():
            print(f"{label:44}{statistics.median(xs):>9.0f}{min(xs):>9.0f}{max(xs):>9.0f}")
        pk, pb = (statistics.median(xs) for xs in rates.values())
        print(f"ratio pgkeeper / pgBackRest (medians): {pk / pb:.2f}x; target >= 1.5x: "
              f"{'PASS' if pk / pb >= 1.5 else 'FAIL'}")
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    from measure import compile_package

    compile_package(ROOT)  # pgkeeper as installed: its modules' bytecode compiled (measure.py)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", action="store_true", help="only wal-push against pgbackrest archive-async")
    ap.add_argument("--rounds", type=int, default=3, help="with --peer: rounds of each")
    ap.add_argument("--segments", type=int, default=100)
    ap.add_argument("--archive-timeout", type=int, default=2)
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--push-ahead", type=int, default=DEFAULT_PUSH_AHEAD)
    args = ap.parse_args()
    if args.peer:
        return against_peer(args.segments, args.rounds, args.push_ahead)

    base = scratch_dir("pgkeeper-walbench-")
    cp_dest, dd_dest = make_server_dir(base / "cp"), make_server_dir(base / "dd")
    configs = {}
    _identity, recipient = generate_identity()  # a throwaway key: only the public half is used
    for label, ahead, recipients in (("single", 0, []), ("ahead", args.push_ahead, []),
                                     ("sealed", args.push_ahead, [recipient])):
        spool = prepare_spool(base / f"spool-{label}")
        configs[label] = write_config(base / f"wal-{label}.json",
                                      WalConfig(spool=str(spool), push_ahead=ahead, recipients=recipients))
    pushing = f"wal-push, push-ahead {args.push_ahead}"  # the default setting, held to the targets
    sealed = f"wal-push, ahead {args.push_ahead}, age"  # encrypted, as with offsite copies on
    commands = {
        "cp": f"cp %p {cp_dest}/%f",
        "dd conv=fsync": f"dd if=%p of={dd_dest}/%f bs=1M conv=fsync status=none",
        "wal-push, one file a call": archive_command(configs["single"]),
        pushing: archive_command(configs["ahead"], claim_spool=str(base / "spool-ahead")),
        sealed: archive_command(configs["sealed"], claim_spool=str(base / "spool-sealed")),
    }
    cluster = LocalCluster(base / "data", settings={
        "archive_mode": "on", "archive_command": "''", "max_wal_size": "'8GB'", "wal_compression": "off",
        "log_line_prefix": "'%m [%p] '"})
    try:
        cluster.init().start()
        print(f"archive_command runs as the postgres user: {pgkeeper_command()} wal-push --config ... %p")
        results = {}
        with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
            c.execute("CREATE TABLE load (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), body text, n int)")
            for label, command in commands.items():
                t = time.perf_counter()
                results[label] = drain(cluster, c, command, args.segments)
                print(f"  {label}: {len(results[label][0])} files archived ({time.perf_counter() - t:.0f} s "
                      "with the workload)")
                c.execute("TRUNCATE load")
                c.execute("CHECKPOINT")
            stored = sum(p.stat().st_size for p in (base / "spool-ahead").rglob("*.zst"))  # same names when sealed
            raw = 16 * 2**20 * len(results[pushing][0])
            print(f"spool: {stored / 2**20:.0f} MB for {raw / 2**20:.0f} MB of WAL (ratio {raw / max(stored, 1):.1f}x)")

            print(f"\nPostgreSQL's archiver working through {args.segments} ready 16 MB segments "
                  "(per call, from the server log):")
            # Ratios to cp: time a segment costs the archiver, median call and throughput.
            cp_lat, cp_rate = results["cp"]
            print(f"{'':30}{'median':>10}{'p95':>10}{'max':>10}{'segments/min':>15}"
                  f"{'median/cp':>11}{'time per segment/cp':>21}")
            for label, (lat, rate) in results.items():
                print(f"{label:30}{statistics.median(lat) * 1000:>8.0f}ms{p95(lat) * 1000:>8.0f}ms"
                      f"{max(lat) * 1000:>8.0f}ms{rate:>15.0f}"
                      f"{statistics.median(lat) / statistics.median(cp_lat):>11.2f}{cp_rate / rate:>21.2f}")
            for label in (pushing, sealed):
                lat, rate = results[label]
                med = statistics.median(lat) * 1000
                print(f"targets ({label}): median <= 80 ms: {'PASS' if med <= 80 else 'FAIL'} ({med:.0f} ms); "
                      f">= 600 segments/min: {'PASS' if rate >= 600 else 'FAIL'} ({rate:.0f})")
            call_ratio = statistics.median(results[sealed][0]) / statistics.median(results[pushing][0])
            print(f"encryption costs {call_ratio:.2f}x the median call, "
                  f"{results[pushing][1] / results[sealed][1]:.2f}x the time per segment")

            lags = rpo_probe(c, commands[pushing], args.archive_timeout, args.probes)
            print(f"\nRPO with archive_timeout = {args.archive_timeout}s ({len(lags)} single-row commits, "
                  "commit -> segment archived by wal-push):")
            print(f"median {statistics.median(lags):.2f} s, max {max(lags):.2f} s")
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

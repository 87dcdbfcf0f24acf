"""WAL archiving: wal-push latency and throughput against `cp`, and the RPO archive_timeout gives.

    .venv/bin/python benchmarks/wal.py [--segments 100] [--archive-timeout 2] [--probes 10]

1. A throwaway PostgreSQL 15 cluster (archive_command = cp) produces --segments real 16 MB
   WAL segments from an insert workload (random text, so the WAL is not all zeros).
2. Each segment is pushed with `pgkeeper wal-push` in a new process, serially, exactly as
   PostgreSQL's archiver runs it (fsync included); the same segments are copied with `cp`
   and with `dd conv=fsync` (cp plus the fsync wal-push does) for comparison.
   Targets (DESIGN.md): median <= 80 ms per segment, >= 600 segments/min.
3. The cluster is switched to archive_command = wal-push with archive_timeout; single-row
   commits are timed until pg_stat_archiver reports their segment archived: the RPO.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgkeeper.localcluster import LocalCluster, make_server_dir, scratch_dir  # noqa: E402
from pgkeeper.wal.command import archive_command, pgkeeper_command  # noqa: E402
from pgkeeper.wal.config import DEFAULT_LEVEL, WalConfig  # noqa: E402
from pgkeeper.wal.naming import check_wal_name  # noqa: E402
from pgkeeper.wal.setup import write_config  # noqa: E402


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def generate_segments(cluster: LocalCluster, raw: Path, count: int) -> list[Path]:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS load (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), "
                  "body text, n int)")
        start = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        while True:
            c.execute("INSERT INTO load (body, n) SELECT md5(random()::text) || repeat(md5(g::text), 3) "
                      "|| md5(random()::text), g FROM generate_series(1, 100000) g")
            done = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)).fetchone()[0]
            if done > (count + 1) * 16 * 1024 * 1024:
                break
        c.execute("SELECT pg_switch_wal()")
        want = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            last = c.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if last and last >= want[:24]:
                break
            time.sleep(0.2)
    segs = sorted(p for p in raw.iterdir() if len(p.name) == 24 and check_wal_name(p.name))
    return segs[-count:]


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def push_benchmark(segs: list[Path], work: Path, level: int) -> dict[str, list[float]]:
    script = str(Path(sys.executable).parent / "pgkeeper")
    spool = work / "bench-spool"
    cfg = work / "bench-wal.json"
    cfg.write_text(WalConfig(spool=str(spool), compression_level=level).to_json().decode())
    results: dict[str, list[float]] = {"wal-push": [], "cp": [], "dd conv=fsync": []}
    for d in ("cp-dest", "dd-dest"):
        (work / d).mkdir(exist_ok=True)
    for seg in segs:
        results["wal-push"].append(timed([script, "wal-push", "--config", str(cfg), str(seg)]))
        results["cp"].append(timed(["cp", str(seg), str(work / "cp-dest" / seg.name)]))
        results["dd conv=fsync"].append(timed(["dd", f"if={seg}", f"of={work / 'dd-dest' / seg.name}",
                                               "bs=1M", "conv=fsync", "status=none"]))
    stored = sum(p.stat().st_size for p in spool.rglob("*.zst"))
    raw = sum(p.stat().st_size for p in segs)
    print(f"spool: {len(list(spool.rglob('*.zst')))} objects, {stored / 2**20:.0f} MB for "
          f"{raw / 2**20:.0f} MB of WAL (ratio {raw / max(stored, 1):.1f}x)")
    return results


def rpo_probe(cluster: LocalCluster, cfg_path: Path, archive_timeout: int, probes: int) -> list[float]:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(f"ALTER SYSTEM SET archive_command = {_lit(archive_command(cfg_path))}")
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


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=100)
    ap.add_argument("--archive-timeout", type=int, default=2)
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="zstd level for wal-push")
    args = ap.parse_args()

    base = scratch_dir("pgkeeper-walbench-")
    raw = make_server_dir(base / "raw")
    raw.chmod(0o755)
    cfg_path = base / "wal.json"
    write_config(cfg_path, WalConfig(spool=str(base / "spool")))
    cluster = LocalCluster(base / "data", settings={
        "archive_mode": "on", "archive_command": _lit(f"cp %p {raw}/%f"), "max_wal_size": "'4GB'",
        "wal_compression": "off"})
    try:
        cluster.init().start()
        t = time.perf_counter()
        segs = generate_segments(cluster, raw, args.segments)
        print(f"generated {len(segs)} real WAL segments in {time.perf_counter() - t:.1f} s")
        for seg in segs:
            seg.chmod(0o644)
        print(f"archive_command as the postgres user: {pgkeeper_command()} wal-push --config ... %p")

        results = push_benchmark(segs, base, args.level)
        print(f"\nper 16 MB segment, zstd level {args.level}, {len(segs)} segments, "
              "one process each (as the archiver runs it):")
        print(f"{'':16}{'median':>10}{'p95':>10}{'segments/min':>15}")
        for name, xs in results.items():
            print(f"{name:16}{statistics.median(xs) * 1000:>8.1f}ms{p95(xs) * 1000:>8.1f}ms"
                  f"{60 * len(xs) / sum(xs):>15.0f}")
        med = statistics.median(results["wal-push"]) * 1000
        rate = 60 * len(results["wal-push"]) / sum(results["wal-push"])
        print(f"targets: median <= 80 ms: {'PASS' if med <= 80 else 'FAIL'} ({med:.1f} ms); "
              f">= 600 segments/min: {'PASS' if rate >= 600 else 'FAIL'} ({rate:.0f})")

        lags = rpo_probe(cluster, cfg_path, args.archive_timeout, args.probes)
        print(f"\nRPO with archive_timeout = {args.archive_timeout}s ({len(lags)} single-row commits, "
              "commit -> segment archived by wal-push):")
        print(f"median {statistics.median(lags):.2f} s, max {max(lags):.2f} s")
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

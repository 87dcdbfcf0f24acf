"""The benchmark database: about 1 GB at scale 50 (pgbench tables plus text and jsonb).

Shared by benchmarks/backup.py and benchmarks/restore.py so both measure the same data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgkeeper.localcluster import LocalCluster

SOURCE_DB = "bench_source"
PASSWORD = "bench-pw"
CLUSTER_SETTINGS = {"shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "15min"}


def new_memory_seconds_per_gb(megabytes: int = 256) -> float:
    """Seconds per GB to touch memory this process never had (a buffer written once, then freed).

    On the VMs these benchmarks have run on, the host takes freed guest memory back (free page
    reporting), so the first touch of a page costs a fault on the host too: 0.5-3.7 s per GB
    measured on one machine within an hour (not measured here without a hypervisor). Whatever a contest
    writes anew (the page cache of a restored database, its WAL, a work file, a Python heap) pays
    that, so the machine's phase moves every figure; the benchmarks print this beside their rounds
    to read the ratios by (docs/performance.md, "New memory")."""
    started = time.monotonic()
    buffer = bytearray(megabytes << 20)  # zero-filled by a memset: every page written once
    seconds = time.monotonic() - started
    del buffer
    return seconds * 1024 / megabytes


def use_own_home(home: Path) -> None:
    """Point PGKEEPER_HOME at `home` for this benchmark and the commands it starts: the manifest key
    a first backup makes, the proofs a drill keeps and the commands' logs land there, not in the
    user's ~/.pgkeeper. Called once the cluster runs: its server (and a wal-push it would run as
    the server user) must not inherit a home only this user can read. With --reuse, `home` sits
    beside the kept repository, whose manifests its key signed."""
    os.environ["PGKEEPER_HOME"] = str(home)


def machine_phase() -> str:
    """One line for a round's printout: what new memory costs right now."""
    return f"new memory {new_memory_seconds_per_gb():.2f} s/GB"


def bench_arguments(ap: argparse.ArgumentParser) -> None:
    """--scale, --rounds and --reuse, as every benchmark on this database takes them."""
    ap.add_argument("--scale", type=float, default=50, help="pgbench scale (50: about 1 GB in all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reuse", metavar="DIR", help="keep the cluster in DIR and reuse it on the next run")


def build(cluster, scale: float) -> None:
    import psycopg

    from pgkeeper import pgtools

    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (SOURCE_DB,)).fetchone():
            print(f"reusing database {SOURCE_DB}")
            return
        c.execute(f"CREATE DATABASE {SOURCE_DB}")
    started = time.monotonic()
    subprocess.run([pgtools.tool("pgbench"), "-i", "-q", "-s", str(int(max(scale, 1))), SOURCE_DB],
                   env={**os.environ, **cluster.libpq_env(SOURCE_DB)}, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    rows = int(scale * 10_000)
    with psycopg.connect(cluster.conninfo(SOURCE_DB), autocommit=True) as c:
        c.execute("CREATE TABLE documents (id bigint PRIMARY KEY, body text, attrs jsonb)")
        c.execute("INSERT INTO documents SELECT i, repeat(md5(i::text), 8), jsonb_build_object("
                  "'n', i, 'tag', md5((i * 7)::text), 'list', jsonb_build_array(i, i + 1, md5(i::text))) "
                  "FROM generate_series(1, %s) i", (rows,))
        c.execute("CREATE INDEX ON documents USING gin (attrs)")
        c.execute("VACUUM ANALYZE")
        size = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    print(f"built {SOURCE_DB}: {size / 2**30:.2f} GB in {time.monotonic() - started:.0f} s")


def port_for(base: Path) -> int:
    """A reused cluster keeps its port (remembered beside it)."""
    from pgkeeper.localcluster import free_port

    remembered = base / "port"
    if remembered.exists():
        return int(remembered.read_text())
    port = free_port()
    remembered.write_text(str(port))
    return port


@contextmanager
def bench_cluster(reuse: str | None, prefix: str) -> Iterator[tuple[LocalCluster, Path]]:
    """A started throwaway cluster and a work directory; both gone afterwards (the cluster is
    kept, stopped, when `reuse` names its directory)."""
    from pgkeeper.localcluster import LocalCluster, scratch_dir

    base = Path(reuse) if reuse else scratch_dir(prefix)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    cluster = LocalCluster(base / "data", password=PASSWORD, port=port_for(base))
    if not cluster.initialized:
        cluster.init(CLUSTER_SETTINGS)
    work = Path(tempfile.mkdtemp(prefix="pgkeeper-bench-work-"))
    cluster.start()
    try:
        yield cluster, work
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
        if not reuse:
            shutil.rmtree(base, ignore_errors=True)

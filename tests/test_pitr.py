"""Point-in-time recovery end to end: a real cluster archiving through wal-push, a base backup,
rows committed over several WAL segments, recovery to a moment between two of them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.localcluster import LocalCluster, free_port, scratch_dir
from pgkeeper.tasks.recovery import recovery_secrets_dir, syncfs_reports_errors
from pgkeeper.wal import command
from pgkeeper.wal.testing import ArchivingCluster, archiving_cluster
from tests.conftest import PASSWORD


def wait_archived(cluster: LocalCluster, timeout: float = 60) -> None:
    """Switch WAL and wait until the archiver has pushed everything written so far."""
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute("SELECT pg_switch_wal()")
        want = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn() - 1)").fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = c.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if last and last[:24] >= want:
                return
            time.sleep(0.2)
    raise AssertionError(f"{want} was not archived in {timeout} s")


def commit_rows(cluster: LocalCluster, count: int, start: int = 1,
                switch_every: int = 4) -> list[tuple[int, datetime, datetime]]:
    """Insert rows one transaction each; per row (id, server time before, server time after commit)."""
    rows = []
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS events (id int PRIMARY KEY, note text)")
        for i in range(start, start + count):
            before = c.execute("SELECT clock_timestamp()").fetchone()[0]
            c.execute("INSERT INTO events VALUES (%s, %s)", (i, f"event {i}"))
            after = c.execute("SELECT clock_timestamp()").fetchone()[0]
            rows.append((i, before, after))
            if i % switch_every == 0:
                c.execute("SELECT pg_switch_wal()")
            time.sleep(0.15)
    return rows


def save_blocks(cluster: LocalCluster, repo: BackupRepository) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    PostgresConnection(host=cluster.host, port=cluster.port, user="postgres", password=SecretStr(cluster.password),
                       database="postgres").save(f"pitr-db-{suffix}", overwrite=True)
    repo.save(f"pitr-repo-{suffix}", overwrite=True)
    return f"pitr-db-{suffix}", f"pitr-repo-{suffix}"


@pytest.fixture
def recovered_dirs() -> Iterator[list]:
    """Data directories recovered by a test; their servers are stopped afterwards."""
    base = scratch_dir("pgkeeper-recovered-")
    made: list = [base]
    try:
        yield made
    finally:
        for d in made[1:]:
            LocalCluster(d).stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def recovered_ids(port: int) -> tuple[list[int], bool]:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres password={PASSWORD}") as c:
        ids = [r[0] for r in c.execute("SELECT id FROM events ORDER BY id").fetchall()]
        in_recovery = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    return ids, in_recovery


@pytest.fixture(scope="module")
def arch() -> Iterator[ArchivingCluster]:
    with archiving_cluster(PASSWORD, archive_timeout="1s") as a:
        yield a


def count_python_fetches(monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
    """Have restore_command's wal-fetch (the Python start the shell take avoids) append its
    arguments to `log` before it runs: the real command, wrapped."""
    log.touch()
    log.chmod(0o666)
    real = command.pgkeeper_command
    monkeypatch.setattr(command, "pgkeeper_command", lambda user=command.SERVER_USER:
                        f"sh -c 'echo \"$@\" >> {shlex.quote(str(log))}; exec \"$0\" \"$@\"' {real(user)}")


def prefetchers_of(recovery_dir: Path) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"pgkeeper.wal.prefetch" in cmd and str(recovery_dir).encode() in cmd:
            found.append(int(pid))
    return found


def test_recovery_to_a_time_then_to_latest(arch: ArchivingCluster, recovered_dirs: list,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pgkeeper.flows.base_backup import base_backup
    from pgkeeper.flows.pitr import pitr

    repo = BackupRepository(path=str(arch.repo_path))
    db, repo_block = save_blocks(arch.cluster, repo)
    first = commit_rows(arch.cluster, 3)
    backup = base_backup(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path),
                         verify=False)
    rows = commit_rows(arch.cluster, 16, start=4)
    wait_archived(arch.cluster)
    assert first[-1][2] < backup.finished_at < rows[0][1]

    # A moment between two commits, well after the base backup: rows 1..k and nothing later.
    k = 12
    _, _, after_k = rows[k - 4]
    _, before_next, _ = rows[k - 3]
    target = after_k + (before_next - after_k) / 2
    into = recovered_dirs[0] / "at-time"
    recovered_dirs.append(into)
    port = free_port()
    result = pitr(data_dir=str(into), port=port, target_time=target.isoformat(sep=" "), repository_block=repo_block)
    ids, in_recovery = recovered_ids(port)
    assert ids == list(range(1, k + 1))
    assert in_recovery is False
    assert result.backup_id == backup.backup_id and result.timeline == 2
    assert "recovery stopping" in result.reached
    assert result.last_transaction_at is not None and result.last_transaction_at <= target

    latest_dir = recovered_dirs[0] / "latest"
    recovered_dirs.append(latest_dir)
    port2 = free_port()
    calls = recovered_dirs[0] / "python-fetches.log"
    count_python_fetches(monkeypatch, calls)
    pitr(data_dir=str(latest_dir), port=port2, latest=True, repository_block=repo_block)
    ids, in_recovery = recovered_ids(port2)
    assert ids == list(range(1, 3 + 16 + 1)) and in_recovery is False
    # Segments the prefetcher had queued went to the server through the shell take, without a
    # Python start (those wal-fetch calls are logged); the queue went with the recovery directory,
    # and its prefetcher with it.
    server_log = (latest_dir / "log" / "pgkeeper-pitr.log").read_text()
    restored = re.findall(r'restored log file "([0-9A-F]{24})" from archive', server_log)
    python = [line.split()[-2] for line in calls.read_text().splitlines() if "wal-fetch" in line]
    by_shell = sum((Counter(restored) - Counter(python)).values())  # restored without a wal-fetch call
    assert len(restored) >= 4 and by_shell >= len(restored) // 2, (restored, python)
    recovery_dir = recovery_secrets_dir(str(latest_dir))
    assert not recovery_dir.exists()
    deadline = time.monotonic() + 30
    while prefetchers_of(recovery_dir):
        assert time.monotonic() < deadline, "a prefetcher outlived the recovery"
        time.sleep(0.1)
    # The start-up sync ran with syncfs for this start only (the unpack was synced before the
    # start); the recovered cluster's configuration keeps PostgreSQL's default.
    with psycopg.connect(f"host=127.0.0.1 port={port2} user=postgres dbname=postgres password={PASSWORD}") as c:
        method = c.execute("SHOW recovery_init_sync_method").fetchone()[0]
    assert method == ("syncfs" if syncfs_reports_errors() else "fsync")
    assert "recovery_init_sync_method" not in (latest_dir / "postgresql.auto.conf").read_text()

    # The original cluster was never touched, and its archive holds no second timeline.
    with psycopg.connect(arch.cluster.conninfo()) as c:
        assert c.execute("SELECT count(*) FROM events").fetchone()[0] == 19
    assert not list((arch.repo_path / "wal" / "history").glob("00000002.history-*"))


def test_targets_outside_the_archive_are_refused_clearly(arch: ArchivingCluster, recovered_dirs: list) -> None:
    from pgkeeper.flows.pitr import pitr

    repo = BackupRepository(path=str(arch.repo_path))
    _, repo_block = save_blocks(arch.cluster, repo)
    into = recovered_dirs[0] / "too-early"
    state = pitr(data_dir=str(into), port=free_port(), target_time="2001-01-01 00:00:00+00",
                 repository_block=repo_block, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="before the oldest base backup"):
        state.result()
    assert not into.exists()

    into = recovered_dirs[0] / "too-late"
    recovered_dirs.append(into)
    state = pitr(data_dir=str(into), port=free_port(), target_time="2999-01-01 00:00:00+00",
                 repository_block=repo_block, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="past the last archived WAL"):
        state.result()

    busy = recovered_dirs[0] / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    state = pitr(data_dir=str(busy), port=free_port(), latest=True, repository_block=repo_block, return_state=True)
    with pytest.raises(Exception, match="not empty"):
        state.result()
    assert (busy / "something").read_text() == "x"

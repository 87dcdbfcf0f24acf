"""Faults during a backup: killed tools and processes, a full disk, secrets kept secret."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from pgkeeper.catalog import list_backups
from pgkeeper.flows.backup import backup
from tests.helpers import ROOT, run_cli, run_cli_here
from tests.test_backup import backup_dirs, save_blocks


def pg_dump_pids(database: str) -> list[int]:
    """pg_dump processes dumping `database` (other suites may run pg_dump at the same time)."""
    out = subprocess.run(["pgrep", "-f", "pg_dump -Fc -Z0"], capture_output=True, text=True).stdout
    mine = []
    for pid in (int(p) for p in out.split()):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PGDATABASE={database}".encode() in env:
            mine.append(pid)
    return mine


class TableLock:
    """Hold an ACCESS EXCLUSIVE lock so pg_dump blocks mid-backup, where we can hit it."""

    def __init__(self, conninfo: str, table: str = "activity") -> None:
        self.conn = psycopg.connect(conninfo)
        self.conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_killed_pg_dump_leaves_nothing_listed_and_next_backup_succeeds(pg, crm_db, conn, repo):
    db_block, repo_block = save_blocks(conn, repo)
    lock = TableLock(pg.conninfo(crm_db))
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        state=backup(connection_block=db_block, repository_block=repo_block, return_state=True)))
    runner.start()
    try:
        # Kill every attempt (the task retries once), each while it is mid-way.
        while runner.is_alive():
            for pid in pg_dump_pids(crm_db):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
    finally:
        lock.release()
        runner.join()

    assert result["state"].is_failed()
    with pytest.raises(Exception, match="pg_dump was killed by signal 9"):
        result["state"].result()
    assert list_backups(repo.local()) == []
    assert backup_dirs(repo) == [], "the half-made backup folder was removed"

    manifest = backup(connection_block=db_block, repository_block=repo_block)
    assert [m.backup_id for m in list_backups(repo.local())] == [manifest.backup_id]


def free_leaked_backup_slot(database: str, server: str) -> None:
    """Do what a real server's repossessor does within ~75 s: free the slot of a killed run.

    The test harness's server runs no background services, so a SIGKILLed backup's lease on
    the database's backup slot would never expire here.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from pgkeeper.slots import database_limit_name

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(database_limit_name(database, server),
                                               GlobalConcurrencyLimitUpdate(active_slots=0))


def test_backup_process_killed_midway_is_never_listed(pg, pg_env, crm_db):
    lock = TableLock(pg.conninfo(crm_db))
    env = {**os.environ, **pg_env}
    proc = subprocess.Popen([sys.executable, "-m", "pgkeeper.cli.main", "backup"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: pg_dump_pids(crm_db))
        os.killpg(proc.pid, signal.SIGKILL)  # the whole backup: flow process and pg_dump
        proc.wait()
    finally:
        lock.release()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    debris = list((Path(pg_env["BACKUP_DIR"]) / "backups").iterdir())
    assert len(debris) == 1 and not (debris[0] / "manifest.json").exists()

    listing = run_cli("list", env=pg_env)
    assert "no backups" in listing.stdout
    free_leaked_backup_slot(crm_db, f"{pg.host}:{pg.port}")
    done = run_cli_here("backup", env=pg_env)
    assert done.returncode == 0, done.stderr
    listing = run_cli("list", env=pg_env)
    assert len([ln for ln in listing.stdout.splitlines() if ln.startswith("backup_")]) == 1


def test_password_never_leaks_and_files_are_private(pg, crm_db, conn, repo, prefect_api):
    db_block, repo_block = save_blocks(conn, repo)
    lock = TableLock(pg.conninfo(crm_db))
    seen_cmdlines: list[str] = []
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        state=backup(connection_block=db_block, repository_block=repo_block, return_state=True)))
    runner.start()
    try:
        pids = wait_for(lambda: pg_dump_pids(crm_db))
        for pid in pids:
            seen_cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    finally:
        lock.release()
        runner.join()
    state = result["state"]
    assert state.is_completed()
    assert seen_cmdlines and all(pg.password not in c for c in seen_cmdlines)

    manifest = state.result()
    bdir = Path(repo.path) / "backups" / manifest.backup_id
    for f in bdir.iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
        assert pg.password.encode() not in f.read_bytes() or f.suffix != ".json"
    assert pg.password not in (bdir / "manifest.json").read_text()

    # Logs and artifacts of the run, as the Prefect API holds them.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        # Logs reach the API in batches: wait until the run's last line has arrived.
        logs = wait_for(lambda: [lg for lg in client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))] if any(
            "Finished in state Completed" in lg.message and lg.task_run_id is None for lg in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))) else None, timeout=30)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        blocks = client.read_block_document_by_name(db_block, "pgkeeper-postgres-connection",
                                                     include_secrets=False)
    assert logs and artifacts
    assert all(pg.password not in log.message for log in logs)
    assert all(pg.password not in str(a.data) for a in artifacts)
    summary = next(a for a in artifacts if a.type == "markdown")
    assert manifest.backup_id in summary.data and manifest.files[0].sha256 in summary.data
    assert any(a.type == "progress" for a in artifacts)
    assert pg.password not in str(blocks.data)  # stored as a secret, shown obfuscated


@pytest.fixture
def tiny_disk(request):
    """A small tmpfs (size from the test's parameter): a disk that fills up.
    Skipped where mounting is not allowed."""
    from pgkeeper.localcluster import scratch_dir

    mnt = scratch_dir("pgkeeper-tinydisk-")
    size = getattr(request, "param", "2m")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def test_full_disk_fails_clearly_and_leaves_nothing(pg, conn, repo, tiny_disk):
    from pgkeeper.sample_crm import create_crm

    create_crm(pg.conninfo(conn.database), scale=1.0)  # more than the disk holds
    repo = repo.model_copy(update={"path": str(tiny_disk / "repo")})
    db_block, repo_block = save_blocks(conn, repo)
    filler = tiny_disk / "filler"
    state = backup(connection_block=db_block, repository_block=repo_block, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception) as err:
        state.result()
    assert "not enough space" in str(err.value) or "No space left on device" in str(err.value)
    assert backup_dirs(repo) == []
    assert not filler.exists()
    assert sum(f.stat().st_size for f in tiny_disk.rglob("*") if f.is_file()) == 0, "no temp file left"


@pytest.mark.parametrize("tiny_disk", ["16m"], indirect=True)
def test_disk_filling_during_the_dump_fails_clearly(pg, conn, repo, tiny_disk):
    """The estimate fits, but something else fills the disk while the dump runs."""
    repo = repo.model_copy(update={"path": str(tiny_disk / "repo")})
    db_block, repo_block = save_blocks(conn, repo)
    lock = TableLock(pg.conninfo(conn.database))
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        state=backup(connection_block=db_block, repository_block=repo_block, return_state=True)))
    runner.start()
    hog = tiny_disk / ("hog-" + uuid.uuid4().hex)
    try:
        wait_for(lambda: pg_dump_pids(conn.database))
        with open(hog, "wb", buffering=0) as f:  # take every byte left
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
    finally:
        lock.release()
        runner.join()
        hog.unlink(missing_ok=True)
    assert result["state"].is_failed()
    with pytest.raises(Exception, match="No space left on device"):
        result["state"].result()
    assert backup_dirs(repo) == []

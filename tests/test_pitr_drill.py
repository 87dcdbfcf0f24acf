"""The archive against real clusters: a re-initialised cluster pointed at the same repository,
the PITR drill (RTO and RPO recorded and listed), a base backup of another cluster in the same
repository, a recovery whose restore_command fails (it must not promote), and a segment
deleted from the archive (the continuity check, wal-ship and the drill all name it)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups
from pgkeeper.localcluster import LocalCluster, free_port, scratch_dir
from pgkeeper.manifest import Manifest
from pgkeeper.names import new_backup_id
from pgkeeper.wal.config import WalConfig
from pgkeeper.wal.config import write as write_wal_config
from pgkeeper.wal.naming import lsn_segment, segment_name
from pgkeeper.wal.setup import archive_settings
from pgkeeper.wal.testing import ArchivingCluster, archiving_cluster
from tests.conftest import PASSWORD
from tests.helpers import run_cli
from tests.test_pitr import commit_rows, recovered_dirs, save_blocks, wait_archived  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def arch() -> Iterator[ArchivingCluster]:
    with archiving_cluster(PASSWORD, archive_timeout="1s") as a:
        yield a


def sysid(cluster: LocalCluster) -> str:
    with psycopg.connect(cluster.conninfo()) as c:
        return str(c.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def archive_files(repo_path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo_path)): p.read_bytes() for p in (repo_path / "wal").rglob("*") if p.is_file()}


def drill_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("pgkeeper-pitr-drill-*")}


def test_a_reinitialised_cluster_on_the_same_repository_is_refused(arch: ArchivingCluster) -> None:
    commit_rows(arch.cluster, 2)
    wait_archived(arch.cluster)
    before = archive_files(arch.repo_path)
    base = scratch_dir("pgkeeper-second-")
    second = LocalCluster(base / "data", password=PASSWORD, settings=archive_settings(arch.config_path, "1s"))
    try:
        second.init().start()
        with psycopg.connect(second.conninfo(), autocommit=True) as c:
            c.execute("CREATE TABLE t AS SELECT 1 AS id")
            c.execute("SELECT pg_switch_wal()")
            deadline = time.monotonic() + 30
            while c.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0] == 0:
                assert time.monotonic() < deadline, "the second cluster's WAL was never refused"
                time.sleep(0.2)
            assert c.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0] == 0
        log = (base / f"postgres-{second.port}.log").read_text()
        refusal = next(ln for ln in log.splitlines() if "wal-push: error" in ln)
        assert sysid(second) in refusal and sysid(arch.cluster) in refusal
    finally:
        second.destroy()
        shutil.rmtree(base, ignore_errors=True)
    after = archive_files(arch.repo_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of the first archive changed


def test_the_drill_recovers_checks_and_records_rto_and_rpo(arch: ArchivingCluster) -> None:
    from pgkeeper.flows.base_backup import base_backup
    from pgkeeper.flows.pitr_drill import pitr_drill
    from pgkeeper.flows.wal_ship import wal_ship

    repo = BackupRepository(path=str(arch.repo_path))
    db, repo_block = save_blocks(arch.cluster, repo)
    backup = base_backup(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path),
                         verify=False)
    commit_rows(arch.cluster, 8, start=100, switch_every=3)
    wait_archived(arch.cluster)
    # Another cluster's base backup, newer, in the same repository: neither the drill nor the
    # continuity check may take it for this cluster's.
    foreign_dir = arch.repo_path / "backups" / new_backup_id(backup.finished_at + timedelta(minutes=1))
    foreign = backup.model_copy(update={"backup_id": foreign_dir.name, "system_identifier": "7000000000000000042"})
    foreign_dir.mkdir()
    BackupRepository(path=str(arch.repo_path)).storage().write_manifest(foreign_dir.name, foreign.to_bytes())

    wal_ship(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path))
    before = drill_dirs()
    m = pitr_drill(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path))
    assert m.backup_id == backup.backup_id
    drill = m.last_drill
    assert drill is not None and drill.ok and m.status == "verified"
    assert drill.restore_seconds and 0 < drill.restore_seconds < 120
    assert drill.recovered_to is not None and drill.rpo_seconds is not None and drill.rpo_seconds < 120
    assert drill.checks["pg_amcheck"].startswith("PASS") and drill.checks["row counts"].startswith("PASS")
    assert drill.checks["pg_verifybackup"].startswith("PASS")  # the full check of the unpacked copy
    assert drill_dirs() == before  # the scratch copy is gone
    stored = Manifest.from_bytes((arch.repo_path / "backups" / m.backup_id / "manifest.json").read_bytes())
    assert stored.last_drill is not None and stored.last_drill.rpo_seconds == drill.rpo_seconds

    r = run_cli("list", "--backup-dir", str(arch.repo_path))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(m.backup_id))
    assert "RPO" in r.stdout and "RECOVERABLE TO" in r.stdout and "(tl 1)" in line and "GAP" not in line
    shutil.rmtree(foreign_dir)


def test_a_recovery_whose_wal_fetch_fails_stops_instead_of_promoting(arch: ArchivingCluster,
                                                                     recovered_dirs: list) -> None:  # noqa: F811
    from pgkeeper.flows.pitr import pitr

    repo = BackupRepository(path=str(arch.repo_path))
    _, repo_block = save_blocks(arch.cluster, repo)
    assert list_backups(repo.local(), kind="physical")
    # A spool the server's user cannot read: every segment "may exist" (S3 unreachable is the
    # same exit code, see test_wal_archive_faults, but botocore's retries make it slow here).
    locked = recovered_dirs[0] / "locked-spool"
    locked.mkdir(mode=0o000)
    cfg_path = recovered_dirs[0] / "locked-wal.json"
    write_wal_config(cfg_path, WalConfig(spool=str(locked)))
    cfg_path.chmod(0o644)
    into = recovered_dirs[0] / "must-not-promote"
    recovered_dirs.append(into)
    state = pitr(data_dir=str(into), port=free_port(), latest=True, repository_block=repo_block,
                 wal_config=str(cfg_path), timeout_seconds=120, system_identifier=sysid(arch.cluster),
                 return_state=True)
    assert state.is_failed()
    log = (into / "log" / "pgkeeper-pitr.log").read_text()
    assert "wal-fetch: error" in log and "Permission denied" in log
    assert "archive recovery complete" not in log and "selected new timeline ID" not in log
    assert not LocalCluster(into).is_running()


def test_a_missing_segment_is_named_by_continuity_wal_ship_and_the_drill(arch: ArchivingCluster) -> None:
    from pgkeeper.flows.pitr_drill import pitr_drill
    from pgkeeper.flows.wal_ship import wal_ship
    from pgkeeper.tasks.wal_continuity import WalGap

    repo = BackupRepository(path=str(arch.repo_path))
    db, repo_block = save_blocks(arch.cluster, repo)
    newest = list_backups(repo.local(), kind="physical")[-1]
    commit_rows(arch.cluster, 6, start=200, switch_every=2)
    wait_archived(arch.cluster)
    first = segment_name(newest.timeline or 1, lsn_segment(newest.start_lsn or "0/0"))
    segs = sorted(p for p in (arch.repo_path / "wal").glob("0*/0*.zst") if len(p.name.split("-")[0]) == 24
                  and p.name[:24] > first)
    assert len(segs) >= 3
    victim = segs[-3]
    name = victim.name[:24]
    victim.unlink()

    state = wal_ship(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path),
                     return_state=True)
    assert state.is_failed()
    with pytest.raises(WalGap, match=f"WAL segment {name} is missing"):
        state.result()
    r = run_cli("list", "--backup-dir", str(arch.repo_path))
    assert f"GAP at {name}" in r.stdout
    state = pitr_drill(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path),
                       return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=f"WAL segment {name} is missing"):
        state.result()


def test_restore_latest_takes_only_backups_of_the_configured_server(pg: LocalCluster, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from pydantic import SecretStr

    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.manifest import StoredFile
    from pgkeeper.tasks.restore_steps import plan_restore

    repo = BackupRepository(path=str(tmp_path / "repo"))
    conn = PostgresConnection(host=pg.host, port=pg.port, user="postgres", password=SecretStr(pg.password),
                              database="postgres")
    mine, theirs = sysid(pg), "7000000000000000042"
    now = datetime.now(UTC)
    for minutes, cluster in ((10, mine), (5, theirs), (3, "7000000000000000043")):
        at = now - timedelta(minutes=minutes)
        m = Manifest(backup_id=new_backup_id(at), kind="logical", database="postgres", server_version="15.8",
                     system_identifier=cluster, tool_version="pgkeeper test", started_at=at, finished_at=at,
                     compression="zstd", size=1, files=[StoredFile(name="postgres.dump.zst", size=1, sha256="0" * 64)])
        folder = repo.local().backups_dir / m.backup_id
        folder.mkdir(parents=True)
        repo.storage().write_manifest(m.backup_id, m.to_bytes())
    plan = plan_restore(conn, repo, "latest", "local", "new", "copy_of_postgres")
    assert plan.backup_id == new_backup_id(now - timedelta(minutes=10)) and plan.system_identifier == mine

"""`pgkeeper wal-setup`: shows the settings, applies them, says a restart is needed; after the
restart the server archives through wal-push."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgkeeper.localcluster import LocalCluster, throwaway_cluster
from pgkeeper.wal.spool import LocalWalStore
from tests.conftest import PASSWORD
from tests.helpers import run_cli


@pytest.fixture
def plain_cluster() -> Iterator[LocalCluster]:
    with throwaway_cluster("pgkeeper-walsetup-", PASSWORD) as (cluster, _base):
        yield cluster


def test_wal_setup_shows_then_applies_and_archiving_works_after_restart(plain_cluster: LocalCluster) -> None:
    base = plain_cluster.datadir.parent
    env = {"POSTGRES_PASSWORD": PASSWORD}
    args = ["wal-setup", "--database", "postgres", "--host", "127.0.0.1", "--port", str(plain_cluster.port),
            "--user", "postgres", "--backup-dir", str(base / "repo"), "--wal-config", str(base / "wal.json"),
            "--archive-timeout", "1s"]
    shown = run_cli(*args, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "archive_mode = on" in shown.stdout and "change" in shown.stdout and "--apply" in shown.stdout
    assert not (base / "wal.json").exists()

    applied = run_cli(*args, "--apply", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "restart PostgreSQL to apply archive_mode" in applied.stdout
    assert PASSWORD not in applied.stdout + applied.stderr
    assert json.loads((base / "wal.json").read_text())["spool"] == str(base / "repo" / "wal")

    plain_cluster.stop()
    plain_cluster.start()
    with psycopg.connect(plain_cluster.conninfo(), autocommit=True) as c:
        assert c.execute("SHOW archive_mode").fetchone()[0] == "on"
        assert "wal-push --config" in c.execute("SHOW archive_command").fetchone()[0]
        c.execute("CREATE TABLE t AS SELECT 1 AS x")
        seg = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        c.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while not LocalWalStore(base / "repo" / "wal").find(seg):
            assert time.monotonic() < deadline, "segment was not archived"
            time.sleep(0.2)
        assert c.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0] == 0

    again = run_cli(*args, env=env)
    assert "change" not in again.stdout


def test_settings_a_user_tuned_survive_a_rewrite_of_the_config(tmp_path: Path) -> None:
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.wal.config import WalConfig, load, write
    from pgkeeper.wal.setup import config_from_repository

    tuned = WalConfig(spool=str(tmp_path / "wal"), compression_level=3, keep_local_seconds=600, push_ahead=0)
    write(tmp_path / "wal.json", tuned)
    again = config_from_repository(BackupRepository(path=str(tmp_path)), load(str(tmp_path / "wal.json")))
    assert (again.compression_level, again.keep_local_seconds, again.push_ahead) == (3, 600, 0)

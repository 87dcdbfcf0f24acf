"""`pgkeeper base-backup`'s early start (pgkeeper/early_base.py): the WAL config, the preflight,
the backup id and pg_basebackup's stream are begun before Prefect is imported, and the run
adopts them; whenever the run could choose otherwise, today's path runs.

Each command runs in a fresh process (only there is Prefect not imported yet); a small probe
around pgkeeper's own functions reports what the early start did. Never a time."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgkeeper.wal.archive import segments_between
from pgkeeper.wal.spool import LocalWalStore
from pgkeeper.wal.testing import ArchivingCluster, archiving_cluster
from tests.conftest import PASSWORD
from tests.early_probe import probe_script, run_probe
from tests.helpers import alive, pids_running, wait_for

PROBE = probe_script("pgkeeper.early_base", "EarlyBaseBackup")  # what the early start did


@pytest.fixture(scope="module")
def arch() -> Iterator[ArchivingCluster]:
    from pgkeeper import keys

    keys.mac_keys(create=True)  # without a manifest key the run would look for Secret blocks
    with archiving_cluster(PASSWORD, prefix="pgkeeper-bbearly-") as a:
        with psycopg.connect(a.cluster.conninfo(), autocommit=True) as c:
            c.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 20000) g")
        yield a


def env_of(a: ArchivingCluster, **extra: str) -> dict[str, str]:
    return {**os.environ, "POSTGRES_HOST": a.cluster.host, "POSTGRES_PORT": str(a.cluster.port),
            "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": a.cluster.password, "POSTGRES_DB": "postgres",
            "BACKUP_DIR": str(a.repo_path), **extra}


def probe(tmp_path: Path, a: ArchivingCluster, background: bool = False, **extra: str):  # noqa: ANN201
    return run_probe(PROBE, tmp_path, ["base-backup", "--wal-config", str(a.config_path)], env_of(a, **extra),
                     background)


def listed(a: ArchivingCluster) -> list:  # -> list[Manifest]
    from pgkeeper.catalog import list_backups
    from pgkeeper.storage.local import LocalStorage

    return list_backups(LocalStorage(a.repo_path))


def folders(a: ArchivingCluster) -> set[str]:
    backups = a.repo_path / "backups"
    return {p.name for p in backups.iterdir()} if backups.exists() else set()


def basebackup_pids(backup_id: str, command_pid: int | None = None) -> list[int]:
    """pg_basebackup processes streaming `backup_id` (its label names it), or started early by the
    command `command_pid` (before the id was claimed, the label names the command's process)."""
    from pgkeeper.basebackup_tool import label_of
    from pgkeeper.early_base import early_label

    labels = {label_of(backup_id).encode()} | ({early_label(command_pid).encode()} if command_pid else set())
    return pids_running(b"pg_basebackup", *labels)


def test_the_run_adopts_the_stream_started_before_prefect(arch, tmp_path):
    before = {m.backup_id for m in listed(arch)}
    seen, out = probe(tmp_path, arch)
    assert seen["code"] == 0 and seen["forked"], seen
    assert seen["adopted"] == seen["backup_id"]
    assert seen["backup_id"] in out.stdout and "checked" in out.stdout
    assert not alive(seen["child"])  # reaped by the run's pg-basebackup step
    [m] = [m for m in listed(arch) if m.backup_id not in before]
    assert m.backup_id == seen["backup_id"] and m.kind == "physical" and m.status == "checked"
    # Everything after the stream is the run's, unchanged: read-back, WAL parsed, manifest last.
    checks = m.verifications[0].checks
    assert {"checksums", "backup_manifest", "wal"} <= set(checks)
    assert all(v.startswith("PASS") for v in checks.values())
    archived = {o.name for o in LocalWalStore(arch.repo_path / "wal").objects()}
    assert set(segments_between(m.start_lsn, m.stop_lsn, 1)) <= archived
    assert json.loads(arch.config_path.read_text())["spool"] == str(arch.repo_path / "wal")


def test_early_start_off_takes_today_s_path(arch, tmp_path):
    before = {m.backup_id for m in listed(arch)}
    seen, _ = probe(tmp_path, arch, PGKEEPER_EARLY_START="0")
    assert seen["code"] == 0 and not seen["forked"] and seen["adopted"] is None
    assert len([m for m in listed(arch) if m.backup_id not in before]) == 1


def test_a_killed_early_start_leaves_nothing_listed_and_no_process(arch, tmp_path):
    before = {m.backup_id for m in listed(arch)}
    proc, report = probe(tmp_path, arch, background=True, PROBE_DIE_AFTER_FORK="1")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    seen = json.loads(report.read_text())
    assert seen["forked"]
    wait_for(lambda: not alive(seen["child"]), 60, "the early child to die with its parent")
    wait_for(lambda: not basebackup_pids(seen["backup_id"], proc.pid), 60, "pg_basebackup to die with the child")
    # Its claimed folder has no manifest: garbage, not a backup.
    assert {m.backup_id for m in listed(arch)} == before
    from pgkeeper.storage.local import LocalStorage

    LocalStorage(arch.repo_path).abandon_backup(seen["backup_id"])


def test_a_run_adopts_only_what_it_would_have_chosen(tmp_path):
    """Another WAL config file, or another connection: the early start is undone (its claimed
    folder removed) and the run takes today's path."""
    from pydantic import SecretStr

    import pgkeeper.early_base as early_base
    import pgkeeper.early_stream as early_stream
    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.connection import PlainConnection
    from pgkeeper.repository import PlainRepository

    plain = PlainConnection(host="db", port=5433, password="pw", database="postgres")
    repo = PlainRepository(path=str(tmp_path))
    block = PostgresConnection(host="db", port=5433, password=SecretStr("pw"), database="postgres")
    block_repo = BackupRepository(path=str(tmp_path))
    for conn, wal_config in ((block, "/other/wal.json"), (block.model_copy(update={"port": 5434}), "/w.json")):
        backup_id = f"backup_20260101_00000{len(folders_of(tmp_path))}"
        repo.storage().begin_backup(backup_id)
        early_stream._pending = early_base.EarlyBaseBackup(plain, repo, "/w.json", None, None, [],  # type: ignore[arg-type]
                                                           backup_id)
        assert early_base.adopt(conn, block_repo, wal_config) is None
        assert backup_id not in folders_of(tmp_path)
    pending = early_base.EarlyBaseBackup(plain, repo, "/w.json", None, None, [], "b")  # type: ignore[arg-type]
    early_stream._pending = pending
    assert early_base.adopt(block, block_repo, "/w.json") is pending and pending.adopted


def folders_of(path: Path) -> set[str]:
    backups = path / "backups"
    return {p.name for p in backups.iterdir()} if backups.exists() else set()


def test_a_failed_early_stream_fails_the_run_in_one_line_and_leaves_nothing(arch, tmp_path):
    """A role that may read the cluster's facts but not stream it: the checks pass, the child's
    pg_basebackup is refused, and the run's pg-basebackup step reports that (one line, the
    command fails); the claimed folder is removed."""
    role, password = "bb_early_norepl", "norepl-pw"
    drop_role(arch, role)
    with psycopg.connect(arch.cluster.conninfo(), autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN NOREPLICATION PASSWORD '{password}'")
        c.execute(f"GRANT pg_monitor, pg_read_all_settings TO {role}")
        c.execute(f"GRANT EXECUTE ON FUNCTION pg_control_system(), pg_control_checkpoint() TO {role}")
    before = folders(arch)
    try:
        proc, report = probe(tmp_path, arch, background=True, POSTGRES_USER=role, POSTGRES_PASSWORD=password,
                             PGKEEPER_TASK_RETRIES="0")
        _, err = proc.communicate(timeout=300)
    finally:
        drop_role(arch, role)
    seen = json.loads(report.read_text())
    assert seen["forked"] and seen["adopted"] == seen["backup_id"], (seen, err[-3000:])
    assert seen["code"] != 0, err[-4000:]  # main() returned its exit code to the probe
    errors = [ln for ln in err.splitlines() if ln.startswith("pgkeeper: error:")]
    assert len(errors) == 1 and "pg_basebackup" in errors[0], err[-3000:]
    assert password not in err
    assert not alive(seen["child"]) and not basebackup_pids(seen["backup_id"])
    assert folders(arch) == before  # nothing claimed is left


def drop_role(a: ArchivingCluster, role: str) -> None:
    with psycopg.connect(a.cluster.conninfo(), autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            c.execute(f"DROP OWNED BY {role}")  # its grants on the control functions
            c.execute(f"DROP ROLE {role}")

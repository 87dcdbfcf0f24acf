"""The base-backup flow against a real cluster that archives through wal-push."""

from __future__ import annotations

import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import crc32c
import psycopg
import pytest
import zstandard
from pydantic import SecretStr

from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups
from pgkeeper.wal.archive import segments_between
from pgkeeper.wal.spool import LocalWalStore
from pgkeeper.wal.testing import ArchivingCluster, archiving_cluster
from tests.conftest import PASSWORD


@pytest.fixture(scope="module")
def arch() -> Iterator[ArchivingCluster]:
    with archiving_cluster(PASSWORD) as a:
        yield a


def blocks(cluster, repo_path: Path) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    PostgresConnection(host=cluster.host, port=cluster.port, user="postgres", password=SecretStr(cluster.password),
                       database="postgres").save(f"bb-db-{suffix}", overwrite=True)
    BackupRepository(path=str(repo_path)).save(f"bb-repo-{suffix}", overwrite=True)
    return f"bb-db-{suffix}", f"bb-repo-{suffix}"


def test_base_backup_is_stored_verified_and_its_wal_archived(arch: ArchivingCluster) -> None:
    from pgkeeper.flows.base_backup import base_backup

    with psycopg.connect(arch.cluster.conninfo(), autocommit=True) as c:
        c.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10000) g")
        sysid = str(c.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    db, repo_block = blocks(arch.cluster, arch.repo_path)
    m = base_backup(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path))

    assert m.kind == "physical" and m.timeline == 1 and m.system_identifier == sysid
    assert m.start_lsn and m.stop_lsn and m.wal_segment_size == 16 * 1024 * 1024
    folder = arch.repo_path / "backups" / m.backup_id
    names = {f.name for f in m.files}
    assert {"base.tar.zst", "backup_manifest"} <= names
    assert sorted(p.name for p in folder.iterdir()) == sorted(names | {"manifest.json"})
    pg_manifest = json.loads((folder / "backup_manifest").read_text())
    assert pg_manifest["WAL-Ranges"][0]["Start-LSN"] == m.start_lsn
    # CRC32C per file (PostgreSQL's default), as the server writes it: the value's bytes in its
    # own (here little-endian) order; the stored tar holds the same bytes.
    [version] = [e for e in pg_manifest["Files"] if e["Path"] == "PG_VERSION"]
    assert {e["Checksum-Algorithm"] for e in pg_manifest["Files"]} == {"CRC32C"}
    with (folder / "base.tar.zst").open("rb") as raw, tarfile.open(
            fileobj=zstandard.ZstdDecompressor().stream_reader(raw), mode="r|") as tar:
        stored = next(tar.extractfile(t).read() for t in tar if t.name in ("PG_VERSION", "./PG_VERSION"))
    assert crc32c.crc32c(stored).to_bytes(4, "little").hex() == version["Checksum"]
    assert m.status == "checked"
    assert all(v.startswith("PASS") for v in m.verifications[0].checks.values())
    # Streamed: every file was checked against backup_manifest on the way, the WAL parsed after.
    assert {"backup_manifest", "wal"} <= set(m.verifications[0].checks)
    # The WAL the backup needs to become consistent is in the archive now.
    archived = {o.name for o in LocalWalStore(arch.repo_path / "wal").objects()}
    assert set(segments_between(m.start_lsn, m.stop_lsn, 1)) <= archived
    assert [b.backup_id for b in list_backups(BackupRepository(path=str(arch.repo_path)).local())] == [m.backup_id]
    cfg = json.loads(arch.config_path.read_text())
    assert cfg["spool"] == str(arch.repo_path / "wal")


def test_base_backup_refuses_a_server_that_does_not_archive(pg, tmp_path: Path) -> None:
    from pgkeeper.flows.base_backup import base_backup

    db, repo_block = blocks(pg, tmp_path / "repo")
    state = base_backup(connection_block=db, repository_block=repo_block, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="archiving is off"):
        state.result()
    assert not list((tmp_path / "repo" / "backups").glob("backup_*"))


def test_a_cluster_with_a_tablespace_is_staged_and_checked_by_pg_verifybackup(arch: ArchivingCluster) -> None:
    """pg_basebackup cannot stream tablespaces to stdout: such a cluster takes the staged path."""
    from pgkeeper.flows.base_backup import base_backup
    from pgkeeper.pgtools import make_server_dir

    location = make_server_dir(arch.base / "tablespace")
    with psycopg.connect(arch.cluster.conninfo(), autocommit=True) as c:
        c.execute(f"CREATE TABLESPACE bb_space LOCATION '{location}'")
        c.execute("CREATE TABLE in_space TABLESPACE bb_space AS SELECT g AS id FROM generate_series(1, 1000) g")
    try:
        db, repo_block = blocks(arch.cluster, arch.repo_path)
        m = base_backup(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path))
        assert m.status == "checked"
        assert m.verifications[0].checks["pg_verifybackup"].startswith("PASS")
        assert len([f for f in m.files if ".tar" in f.name]) == 2  # base.tar.zst and <oid>.tar.zst
    finally:
        with psycopg.connect(arch.cluster.conninfo(), autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS in_space")
            c.execute("DROP TABLESPACE IF EXISTS bb_space")


def test_base_backup_records_its_parameters_without_fastapi() -> None:
    """Its parameters are plain JSON: recorded as they are (pgkeeper.flows.quick), so the run's
    creation does not import FastAPI (0.2-0.3 s of a command), and equal to Prefect's encoding."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    code = ("import json, sys\n"
            "from pgkeeper.flows.base_backup import base_backup\n"
            "p = {'database': 'postgres', 'port': 5432, 'verify': True, 'labels': ['weekly'], 'backup_dir': None}\n"
            "print(json.dumps([base_backup.serialize_parameters(p) == p, 'fastapi' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, False]

"""`pgkeeper pitr`'s early start (pgkeeper/early_pitr.py): the base backup is chosen and unpacked
before Prefect is imported, and the run's restore-base-backup step adopts the unpack; whenever the
run could choose otherwise, today's path runs, and what an unadopted unpack wrote is removed.

Each command runs in a fresh process (only there is Prefect not imported yet); a small probe
around pgkeeper's own functions reports what the early start did. Never a time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgkeeper.localcluster import LocalCluster, free_port, scratch_dir
from pgkeeper.wal.testing import ArchivingCluster, archiving_cluster
from tests.conftest import PASSWORD
from tests.early_probe import probe_script, run_probe
from tests.helpers import alive, pids_running, run_cli, wait_for
from tests.test_pitr import wait_archived

PROBE = probe_script("pgkeeper.early_pitr", "EarlyUnpack")
APP_ROLES = """
CREATE ROLE pe_owner NOLOGIN;
CREATE ROLE pe_app LOGIN PASSWORD 'pe-app-pw';
"""
APP_SCHEMA = """
CREATE EXTENSION citext;
CREATE SCHEMA app AUTHORIZATION pe_owner;
SET ROLE pe_owner;
CREATE TABLE app.accounts (id int PRIMARY KEY, owner_name text NOT NULL, note public.citext);
ALTER TABLE app.accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON app.accounts USING (owner_name = current_user);
CREATE FUNCTION app.account_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = app
    AS 'SELECT count(*) FROM accounts';
REVOKE EXECUTE ON FUNCTION app.account_count() FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO pe_app;
GRANT SELECT, INSERT ON app.accounts TO pe_app;
GRANT EXECUTE ON FUNCTION app.account_count() TO pe_app;
INSERT INTO app.accounts VALUES (1, 'pe_app', 'Café'), (2, 'someone_else', 'hidden');
SELECT lo_from_bytea(424243, 'a large object');
RESET ROLE;
"""


@pytest.fixture(scope="module")
def arch() -> Iterator[ArchivingCluster]:
    """A cluster archiving through wal-push with an application's database (roles, owners, grants,
    RLS, a definer function, an extension, a large object, database settings), one base backup
    taken by the command, 500 rows and a grant after it."""
    from pgkeeper import keys

    keys.mac_keys(create=True)  # without a manifest key the run would look for Secret blocks
    with archiving_cluster(PASSWORD, prefix="pgkeeper-pitrearly-") as a:
        with psycopg.connect(a.cluster.conninfo(), autocommit=True) as c:
            c.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
            c.execute(APP_ROLES)
            c.execute("CREATE DATABASE crm OWNER pe_owner")
            c.execute("ALTER DATABASE crm SET search_path = app, public")
            c.execute("ALTER ROLE pe_app IN DATABASE crm SET statement_timeout = '30s'")
        with psycopg.connect(a.cluster.conninfo(dbname="crm"), autocommit=True) as c:
            c.execute(APP_SCHEMA)
        took = run_cli("base-backup", "--wal-config", str(a.config_path), env={
            "BACKUP_DIR": str(a.repo_path), "POSTGRES_HOST": a.cluster.host, "POSTGRES_PORT": str(a.cluster.port),
            "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": a.cluster.password, "POSTGRES_DB": "postgres"})
        assert took.returncode == 0, took.stderr[-3000:]
        with psycopg.connect(a.cluster.conninfo(), autocommit=True) as c:
            c.execute("INSERT INTO t SELECT g FROM generate_series(1001, 1500) g")
        with psycopg.connect(a.cluster.conninfo(dbname="crm"), autocommit=True) as c:
            c.execute("INSERT INTO app.accounts VALUES (3, 'pe_app', 'written after the base backup')")
            c.execute("GRANT UPDATE ON app.accounts TO pe_app")
        wait_archived(a.cluster)
        yield a


@pytest.fixture
def into() -> Iterator[Path]:
    """A place for recovered data directories; their servers stopped and all removed afterwards."""
    base = scratch_dir("pgkeeper-pitrearly-into-")
    try:
        yield base
    finally:
        for d in base.iterdir():
            if (d / "postmaster.pid").exists():
                LocalCluster(d).stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def env_of(a: ArchivingCluster, **extra: str) -> dict[str, str]:
    return {**os.environ, "BACKUP_DIR": str(a.repo_path), **extra}


def pitr_argv(a: ArchivingCluster, data_dir: Path, port: int) -> list[str]:
    return ["pitr", "--latest", "--data-dir", str(data_dir), "--port", str(port), "--wal-config", str(a.config_path)]


def roles_of(conninfo: str) -> str:
    """`pg_dumpall --roles-only`: every role with its attributes, password hash and settings."""
    from tests.app_schema import PG_BINDIR, normalize_dump, tool_env

    done = subprocess.run([str(PG_BINDIR / "pg_dumpall"), "--roles-only"], env=tool_env(conninfo, "postgres"),
                          capture_output=True, text=True, timeout=60, check=True)
    return normalize_dump(done.stdout, "postgres")  # without the random \restrict key of each run


def test_the_run_adopts_the_unpack_begun_before_prefect(arch, into, tmp_path):
    data_dir, port = into / "latest", free_port()
    seen, out = run_probe(PROBE, tmp_path, pitr_argv(arch, data_dir, port), env_of(arch))
    assert seen["code"] == 0 and seen["forked"], seen
    assert seen["adopted"] == seen["backup_id"]  # the backup the run chose is the one unpacked
    assert f"from {seen['backup_id']}" in out.stdout and "promoted" in out.stdout
    assert not alive(seen["child"]) and not pids_running(b"tar", str(data_dir).encode())
    recovered = f"host=127.0.0.1 port={port} user=postgres dbname=postgres password={PASSWORD}"
    with psycopg.connect(recovered) as c:
        assert c.execute("SELECT count(*), max(id) FROM t").fetchone() == (1500, 1500)
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    assert (data_dir.stat().st_mode & 0o777) == 0o700
    # PostgreSQL's own view: every database and role as the original has them, up to the end of the WAL.
    from tests.app_schema import dump_data, dump_schema, short_diff

    original = arch.cluster.conninfo()
    for db in ("postgres", "crm"):
        assert dump_schema(recovered, db) == dump_schema(original, db), short_diff(
            dump_schema(original, db), dump_schema(recovered, db))
        assert dump_data(recovered, db) == dump_data(original, db)
    assert "written after the base backup" in dump_data(recovered, "crm")
    assert roles_of(recovered) == roles_of(original)


def test_a_directory_that_is_not_empty_is_refused_before_anything_is_unpacked(arch, into, tmp_path):
    data_dir = into / "full"
    data_dir.mkdir()
    (data_dir / "keep.txt").write_text("mine")
    proc, report = run_probe(PROBE, tmp_path, pitr_argv(arch, data_dir, free_port()), env_of(arch), background=True)
    _, err = proc.communicate(timeout=300)
    seen = json.loads(report.read_text())
    assert not seen["forked"] and seen["code"] != 0
    errors = [line for line in err.splitlines() if line.startswith("pgkeeper: error:")]
    assert len(errors) == 1 and "is not empty" in errors[0], err[-2000:]
    assert [p.name for p in data_dir.iterdir()] == ["keep.txt"]


def test_a_killed_early_start_leaves_no_process(arch, into, tmp_path):
    data_dir = into / "killed"
    proc, report = run_probe(PROBE, tmp_path, pitr_argv(arch, data_dir, free_port()),
                             env_of(arch, PROBE_DIE_AFTER_FORK="1"), background=True)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    seen = json.loads(report.read_text())
    assert seen["forked"]
    wait_for(lambda: not alive(seen["child"]), 60, "the early child to die with its parent")
    wait_for(lambda: not pids_running(b"tar", str(data_dir).encode()), 60, "tar to die with the child")


def test_a_command_killed_at_a_random_moment_leaves_no_unpack_running(arch, into, tmp_path):
    """SIGKILL anywhere in the first seconds (Prefect's import, the unpack, the server's start):
    the early child and its tar die with the command. (A server it had already started is a
    recovery under way, as without the early start; the fixture stops it.)"""
    import random
    import sys
    import time

    data_dir = into / "random-kill"
    proc, _ = run_probe(PROBE, tmp_path, pitr_argv(arch, data_dir, free_port()), env_of(arch), background=True)
    time.sleep(random.uniform(0.2, 3.0))
    proc.kill()
    proc.communicate(timeout=60)
    wait_for(lambda: not pids_running(sys.executable.encode(), str(data_dir).encode()), 60,
             "the command's early child to die with it")
    wait_for(lambda: not pids_running(b"tar", str(data_dir).encode()), 60, "tar to die with the child")


def test_a_run_adopts_only_what_it_would_have_chosen(tmp_path):
    """Another backup, repository, directory or source: the unpack is undone (what it wrote
    removed, a directory it made too, one it found kept) and the run takes today's path."""
    from datetime import UTC, datetime

    import pgkeeper.early_pitr as early_pitr
    import pgkeeper.early_stream as early_stream
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.manifest import Manifest
    from pgkeeper.repository import PlainRepository

    now = datetime.now(UTC)
    manifest = Manifest(backup_id="backup_b", database="", kind="physical", server_version="15", tool_version="x",
                        started_at=now, finished_at=now, compression="zstd", size=0, files=[])
    repo = PlainRepository(path=str(tmp_path / "repo"))
    block_repo = BackupRepository(path=str(tmp_path / "repo"))

    def pending(dest: Path) -> early_pitr.EarlyUnpack:
        early = early_pitr.EarlyUnpack(repo, manifest, dest)
        dest.mkdir(exist_ok=True)
        (dest / "PG_VERSION").write_text("15\n")  # as if the child had begun
        early_stream._pending = early
        return early

    made = tmp_path / "made"
    for args in ((block_repo, "local", "backup_other", made), (block_repo, "s3", "backup_b", made),
                 (BackupRepository(path=str(tmp_path / "other")), "local", "backup_b", made),
                 (block_repo, "local", "backup_b", tmp_path / "elsewhere")):
        pending(made)
        assert early_pitr.adopt(*args) is None
        assert not made.exists()  # the early start made it: removed
    found = tmp_path / "found"
    found.mkdir()
    pending(found)
    assert early_pitr.adopt(block_repo, "local", "backup_other", found) is None
    assert found.is_dir() and not any(found.iterdir())  # it was there before: emptied, kept
    early = pending(made)
    assert early_pitr.adopt(block_repo, "local", "backup_b", made) is early and early.adopted
    early_stream._pending = None


def test_the_command_chooses_the_runs_backup_or_steps_aside(tmp_path, monkeypatch):
    """The command's choice is the run's rule (newest base backup consistent before the target,
    of the archive's cluster); it steps aside for an encrypted one without its private key in the
    key directory, when the local repository has none, and it fails (so the command steps aside)
    for a cluster it holds no base backup of."""
    from argparse import Namespace
    from datetime import UTC, datetime, timedelta

    import pyrage

    from pgkeeper.early_pitr import _chosen
    from pgkeeper.manifest import Manifest, StoredFile
    from pgkeeper.repository import PlainRepository

    monkeypatch.setenv("PGKEEPER_KEYS_DIR", str(tmp_path / "keys"))
    repo = PlainRepository(path=str(tmp_path / "repo"))
    args = Namespace(system_identifier="7", wal_config=None, target_time=None, target_lsn=None, target_name=None,
                     latest=True)
    assert _chosen(args, repo) is None  # nothing local: the run decides (auto reads the bucket)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    storage = repo.storage()
    for day, encryption in ((1, None), (2, "age")):
        m = Manifest(backup_id=f"backup_2026010{day}_000000", kind="physical", database="", server_version="15",
                     tool_version="x", system_identifier="7", started_at=start + timedelta(days=day),
                     finished_at=start + timedelta(days=day, hours=1), compression="zstd", size=1,
                     files=[StoredFile(name="base.tar.zst", size=1, sha256="0" * 64, encryption=encryption)])
        storage.begin_backup(m.backup_id)
        storage.write_manifest(m.backup_id, m.to_bytes())
    assert _chosen(args, repo) is None  # the newest is encrypted and no private key is in the key directory
    (tmp_path / "keys" / "identities.txt").write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    assert _chosen(args, repo).backup_id == "backup_20260102_000000"
    args.latest, args.target_time = False, "2026-01-02 12:00:00+00"
    assert _chosen(args, repo).backup_id == "backup_20260101_000000"
    args.system_identifier = "8"
    with pytest.raises(Exception, match="no base backup of cluster 8"):
        _chosen(args, repo)  # start_unpack turns it into None: the run says it

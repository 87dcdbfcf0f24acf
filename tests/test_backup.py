"""The backup flow against a real PostgreSQL: what a user would check afterwards."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from pgkeeper import codec, pgtools
from pgkeeper.catalog import list_backups
from pgkeeper.flows.backup import backup
from pgkeeper.localcluster import LocalCluster
from tests.helpers import create_database, drop_database, table_fingerprints


def save_blocks(conn, repo) -> tuple[str, str]:
    """Save the connection and repository as blocks, as a user would in the UI."""
    suffix = uuid.uuid4().hex[:8]
    conn.save(f"db-{suffix}", overwrite=True)
    repo.save(f"repo-{suffix}", overwrite=True)
    return f"db-{suffix}", f"repo-{suffix}"


def restore_plain(pg: LocalCluster, repo, manifest, into: str, tmp: Path) -> str:
    """Decompress the stored file and restore it with plain pg_restore, no pgkeeper involved."""
    stored = Path(repo.path) / "backups" / manifest.backup_id / manifest.files[0].name
    archive = tmp / "plain.dump"
    with open(stored, "rb") as src, open(archive, "wb") as out:
        for chunk in codec.decompressed_chunks(src, manifest.compression):
            out.write(chunk)
    create_database(pg, into)
    subprocess.run([pgtools.tool("pg_restore"), "--no-owner", "--exit-on-error", "-d", into, str(archive)],
                   env={**pg.libpq_env(into)}, check=True, capture_output=True)
    return pg.conninfo(into)


def test_backup_then_plain_pg_restore_gives_equal_rows(pg, crm_db, conn, repo, tmp_path):
    db_block, repo_block = save_blocks(conn, repo)
    manifest = backup(connection_block=db_block, repository_block=repo_block)

    assert manifest.backup_id.startswith("backup_")
    assert [m.backup_id for m in list_backups(repo.local())] == [manifest.backup_id]
    restored = "restored_" + uuid.uuid4().hex[:6]
    try:
        restore_plain(pg, repo, manifest, restored, tmp_path)
        assert table_fingerprints(pg.conninfo(restored)) == table_fingerprints(pg.conninfo(crm_db))
    finally:
        drop_database(pg, restored)
    # The manifest's counts are the source's counts.
    source = table_fingerprints(pg.conninfo(crm_db))
    assert manifest.tables == {t: n for t, (n, _) in source.items()}
    assert "public.User" in manifest.tables  # the quoted mixed-case table
    assert manifest.objects["tables"] == 5 and manifest.objects["indexes"] >= 5


def test_manifest_counts_are_the_dumps_own_even_under_concurrent_inserts(pg, crm_db, conn, repo, tmp_path):
    db_block, repo_block = save_blocks(conn, repo)
    stop = threading.Event()
    inserted = {"n": 0}

    def keep_inserting() -> None:
        with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
            while not stop.is_set():
                c.execute("INSERT INTO activity (kind, note, happened_at) VALUES ('call', 'during dump', now())")
                c.execute('INSERT INTO "User" (email, full_name) VALUES (%s, %s)',
                          (f"{uuid.uuid4().hex}@x.example", "Concurrent"))
                inserted["n"] += 1

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    try:
        while inserted["n"] < 20:
            time.sleep(0.05)
        manifest = backup(connection_block=db_block, repository_block=repo_block)
        before_stop = inserted["n"]
    finally:
        stop.set()
        writer.join()

    restored = "restored_" + uuid.uuid4().hex[:6]
    try:
        restore_plain(pg, repo, manifest, restored, tmp_path)
        in_dump = {t: n for t, (n, _) in table_fingerprints(pg.conninfo(restored)).items()}
    finally:
        drop_database(pg, restored)
    assert manifest.tables == in_dump
    live = {t: n for t, (n, _) in table_fingerprints(pg.conninfo(crm_db)).items()}
    assert live["public.activity"] > manifest.tables["public.activity"], "inserts went on during the dump"
    assert before_stop > 20


def backup_dirs(repo) -> list[Path]:
    root = Path(repo.path) / "backups"
    return list(root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("fault", ["wrong-password", "unreachable", "unknown-database", "repo-not-writable"])
def test_bad_settings_fail_with_one_clear_line_and_leave_nothing(pg, crm_db, conn, repo, tmp_path, fault):
    expected = {
        "wrong-password": "password authentication failed",
        "unreachable": "server unreachable",
        "unknown-database": "does not exist",
        "repo-not-writable": "not writable",
    }[fault]
    if fault == "wrong-password":
        conn = conn.model_copy(update={"password": "definitely-wrong"})
    elif fault == "unreachable":
        from pgkeeper.localcluster import free_port

        conn = conn.model_copy(update={"port": free_port()})
    elif fault == "unknown-database":
        conn = conn.model_copy(update={"database": "no_such_db"})
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        repo = repo.model_copy(update={"path": str(blocker / "repo")})
    db_block, repo_block = save_blocks(conn, repo)

    state = backup(connection_block=db_block, repository_block=repo_block, return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception) as err:
        state.result()
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    assert pg.password not in message and "definitely-wrong" not in message
    if fault != "repo-not-writable":
        assert backup_dirs(repo) == []


def test_cli_backup_from_old_script_variables_then_list(pg_env, tmp_path):
    from tests.helpers import run_cli

    done = run_cli("backup", env=pg_env)
    assert done.returncode == 0, done.stderr
    assert "backup backup_" in done.stdout
    listing = run_cli("list", env=pg_env)
    assert listing.returncode == 0, listing.stderr
    lines = [ln for ln in listing.stdout.splitlines() if ln.startswith("backup_")]
    assert len(lines) == 1 and pg_env["POSTGRES_DB"] in lines[0] and "checked" in lines[0]
    assert pg_env["POSTGRES_PASSWORD"] not in done.stdout + done.stderr + listing.stdout


def test_cli_error_is_one_line(pg_env):
    from tests.helpers import run_cli

    done = run_cli("backup", env={**pg_env, "POSTGRES_PASSWORD": "wrong-one"})
    assert done.returncode == 4  # connection
    assert "Traceback" not in done.stderr + done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pgkeeper: error: cannot connect") and "password authentication failed" in last
    assert "wrong-one" not in done.stderr + done.stdout

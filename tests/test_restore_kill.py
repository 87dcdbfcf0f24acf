"""SIGKILL of `pgkeeper restore` at any instant: the target stays connectable with either its old or
its new content, no child goes on writing, and the next run clears what the dead one left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import psycopg

from tests.helpers import ROOT, database_exists, drop_database, pids_with_arg, table_fingerprints
from tests.test_restore import change_data, env, leftovers, old_copies  # noqa: F401


def _swap_running(watch: psycopg.Connection, target: str) -> bool:
    """pgkeeper's session is inside the swap transaction (ending sessions or renaming). Asked over
    one watching session: a connection per poll forked a PostgreSQL backend every few ms."""
    row = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgkeeper' "
                        "AND (query ILIKE '%%pg_terminate_backend%%' OR query ILIKE '%%RENAME TO%%') "
                        "AND query ILIKE %s", (f"%{target}%",)).fetchone()
    return bool(row and row[0])


def _shadows(watch: psycopg.Connection, target: str) -> set[str]:
    """The shadow databases of `target` (prepare_shadow creates one before its pg_restore starts)."""
    rows = watch.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                         (f"{target}\\_restoring\\_%",)).fetchall()
    return {r[0] for r in rows}


def _pg_restore_running(watch: psycopg.Connection, target: str, before: set[str], arg: bytes) -> bool:
    """A pg_restore into the new run's shadow is running. /proc is scanned only once that shadow
    exists: scanning it every few ms from the start spent the test's CPU beside the restore's."""
    return bool(_shadows(watch, target) - before) and bool(pids_with_arg(arg))


def _free_slot(target: str) -> None:
    """The killed run's restore slot: a real server frees it when its 60 s lease runs out; the test
    harness runs no lease service, so the test frees it (recreated on the next use)."""
    from prefect.client.orchestration import get_client

    from pgkeeper.slots import limit_name

    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(limit_name("restore", target))
        except Exception:  # never created, or already gone
            pass


def _start_restore(env_vars: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pgkeeper.cli.main", "restore", "latest", "--yes",
                             "--no-safety-backup"], env={**os.environ, **env_vars}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_restore_killed_at_any_instant_leaves_the_target_usable(pg, crm_db, env, repo, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    work = tmp_path / "work"  # where the restores decompress the dump (PGKEEPER_WORK_DIR)
    work.mkdir()
    monkeypatch.setenv("PGKEEPER_WORK_DIR", str(work))
    env = {**env, "PGKEEPER_WORK_DIR": str(work)}
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:  # a restore that takes a moment
        c.execute("CREATE TABLE bulk AS SELECT i, md5(i::text) AS t FROM generate_series(1, 200000) i")
    backup()
    restored = table_fingerprints(pg.conninfo(crm_db))
    change_data(pg, crm_db)
    changed = table_fingerprints(pg.conninfo(crm_db))
    rng = random.Random(11)
    shadow_arg = f"--dbname={crm_db}_restoring_".encode()
    outcomes = []
    try:
        for phase in ("pg_restore", "swap", "swap"):
            client = psycopg.connect(pg.conninfo(crm_db), autocommit=True)  # an application session
            watch = psycopg.connect(pg.conninfo(), autocommit=True)  # the test's eyes, not counted as a session
            before = _shadows(watch, crm_db)  # a killed run's shadow stays until the next run drops it
            proc = _start_restore(env)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if (phase == "pg_restore" and _pg_restore_running(watch, crm_db, before, shadow_arg)) or \
                        (phase == "swap" and _swap_running(watch, crm_db)):
                    time.sleep(rng.uniform(0, 0.05))
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.003)
            proc.wait(timeout=60)
            watch.close()
            client.close()
            _free_slot(crm_db)
            time.sleep(1.0)  # a child that survived its parent would still be running now
            assert pids_with_arg(shadow_arg) == [], "pg_restore outlived the killed restore"
            now = table_fingerprints(pg.conninfo(crm_db))  # connectable, whatever happened
            assert now in (restored, changed)
            outcomes.append("new" if now == restored else "old")
            if now == restored:
                change_data(pg, crm_db)
                changed = table_fingerprints(pg.conninfo(crm_db))
        assert "old" in outcomes  # at least the pg_restore kill happened before the swap
        # The next run drops the shadows of the dead runs (their process is gone) and says so.
        report = restore("latest", confirmed=True, safety_backup=False, keep_old=False)
        assert table_fingerprints(pg.conninfo(crm_db)) == restored
        assert leftovers(pg, crm_db) == [] and report.target == crm_db
        assert list(work.iterdir()) == []  # the killed runs' decompressed dumps are gone too
    finally:
        for name in old_copies(pg, crm_db) + leftovers(pg, crm_db):
            if database_exists(pg, name):
                drop_database(pg, name)


def test_a_safety_backup_killed_at_any_instant_leaves_the_replaced_copy_held(pg, crm_db, env, repo):  # noqa: F811
    """The safety backup a replace leaves running (as `pgkeeper restore` starts it), SIGKILLed with
    its children at a random instant: nothing half-made is listed, no pg_dump goes on, and the
    replaced copy stays held past its time (its mark pending) unless its backup got listed; a backup
    taken again records itself in the mark and lets the copy go."""
    from prefect.client.orchestration import get_client

    from pgkeeper.catalog import list_backups
    from pgkeeper.config import load_connection
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore
    from pgkeeper.old_copy import PENDING, read_mark
    from pgkeeper.slots import database_limit_name
    from pgkeeper.tasks.swap import comment_of, expire_old_copies

    backup()
    change_data(pg, crm_db)
    report = restore("latest", confirmed=True, keep_old_hours=0, detach_safety_backup=True)
    copy = report.old_copy
    assert copy and report.safety_backup_pending == copy and report.safety_backup_id is None
    conn = load_connection(None)
    try:
        for pause in (random.uniform(0.2, 1.5), random.uniform(1.5, 4.0)):
            proc = subprocess.Popen([sys.executable, "-m", "pgkeeper.cli.main", "backup", "--database", copy,
                                     "--label", "pre-restore"], env={**os.environ, **env}, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(pause)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            with get_client(sync_client=True) as client:  # the harness runs no lease service (see _free_slot)
                try:
                    client.delete_global_concurrency_limit_by_name(database_limit_name(copy, f"{pg.host}:{pg.port}"))
                except Exception:
                    pass
            time.sleep(1.0)  # a child that survived its parent would still be running now
            # Only the copy's pg_dump: the other xdist workers' tests run backups meanwhile.
            assert pids_with_arg(b"--snapshot=", b"pg_dump", environ=f"PGDATABASE={copy}".encode()) == [], \
                "pg_dump outlived the killed safety backup"
            listed = [m.backup_id for m in list_backups(repo.local(), crm_db) if "pre-restore" in m.labels]
            mark = read_mark(comment_of(conn, copy))
            assert mark is not None and len(listed) <= 1
            assert mark.safety in (PENDING, *listed)  # killed between the manifest and the mark: still held
            if mark.safety == PENDING:
                assert expire_old_copies(conn) == [] and database_exists(pg, copy)
        safety = backup(database=copy)
        assert read_mark(comment_of(conn, copy)).safety == safety.backup_id
        assert expire_old_copies(conn) == [copy] and not database_exists(pg, copy)
    finally:
        for name in old_copies(pg, crm_db):
            drop_database(pg, name)

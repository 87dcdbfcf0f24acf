"""When a restore fails, the target is byte-for-byte what it was, the shadow is gone, and the run
says so in one line."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.helpers import create_database, database_exists, drop_database, pids_with_arg, table_fingerprints
from tests.test_restore import change_data, env, leftovers, old_copies  # noqa: F401


def backup_then_change(pg, crm_db):
    from pgkeeper.flows.backup import backup

    m = backup()
    change_data(pg, crm_db)
    return m, table_fingerprints(pg.conninfo(crm_db))


def failed_restore(**params):
    from pgkeeper.flows.restore import restore

    state = restore("latest", confirmed=True, return_state=True, **params)
    assert state.is_failed()
    with pytest.raises(Exception) as exc:
        state.result()
    return str(exc.value)


def assert_untouched(pg, crm_db, before) -> None:
    assert table_fingerprints(pg.conninfo(crm_db)) == before
    assert leftovers(pg, crm_db) == [] and old_copies(pg, crm_db) == []
    with psycopg.connect(pg.conninfo(crm_db)) as c:  # still accepting connections
        assert c.execute("SELECT datallowconn FROM pg_database WHERE datname = current_database()").fetchone()[0]


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_corrupt_backup_is_refused_before_anything_is_touched(pg, crm_db, env, repo, damage):  # noqa: F811
    # Refused by its checksum before the work file's offsets are written (dumpoffsets.py).
    m, before = backup_then_change(pg, crm_db)
    stored = Path(repo.path) / "backups" / m.backup_id / m.files[0].name
    data = bytearray(stored.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    stored.write_bytes(bytes(data))
    message = failed_restore()
    assert m.backup_id in message and f"database {crm_db} is unchanged" in message
    assert "sha256 mismatch" in message or "corrupt" in message.lower()
    assert "\n" not in message
    assert_untouched(pg, crm_db, before)


def test_counts_that_do_not_match_the_manifest_stop_before_the_swap(pg, crm_db, env, repo):  # noqa: F811
    m, before = backup_then_change(pg, crm_db)
    path = Path(repo.path) / "backups" / m.backup_id / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["tables"]["public.company"] += 1
    repo.storage().write_manifest(m.backup_id, json.dumps(manifest).encode())  # an insider: signed again
    message = failed_restore(safety_backup=False)
    assert "does not match backup" in message and "public.company" in message
    assert f"database {crm_db} is unchanged" in message
    assert_untouched(pg, crm_db, before)


def test_a_killed_pg_restore_leaves_the_target_as_it_was(pg, crm_db, env, repo):  # noqa: F811
    from pgkeeper.flows.restore import restore

    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:  # enough data to hit mid-way
        c.execute("CREATE TABLE bulk AS SELECT i, md5(i::text) AS t FROM generate_series(1, 400000) i")
    m, before = backup_then_change(pg, crm_db)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        state=restore("latest", confirmed=True, safety_backup=False, return_state=True)))
    runner.start()
    killed = 0
    mark = f"--dbname={crm_db}_restoring_".encode()
    try:
        while runner.is_alive():
            for pid in pids_with_arg(mark):  # only this test's pg_restore, never anyone else's
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
    finally:
        runner.join()
    assert killed
    state = result["state"]
    assert state.is_failed()
    with pytest.raises(Exception, match="pg_restore was killed by signal 9") as exc:
        state.result()
    assert f"database {crm_db} is unchanged" in str(exc.value)
    assert_untouched(pg, crm_db, before)


def test_missing_roles_are_named_before_anything_is_touched_and_created_on_request(
        pg, crm_db, env, repo):  # noqa: F811
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    role = f"owner_{crm_db}"
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} NOLOGIN CONNECTION LIMIT 7 PASSWORD 'sentinel-Pw-1'")
        c.execute(f"ALTER TABLE deal OWNER TO {role}")
        hashed = c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()[0]
    m = backup()
    # The hash travels only in the backup's roles file (0600), never in the manifest.
    folder = Path(repo.path) / "backups" / m.backup_id
    manifest_text = (folder / "manifest.json").read_text()
    assert hashed not in manifest_text and "SCRAM-SHA-256" not in manifest_text
    assert (folder / m.globals_file.name).stat().st_mode & 0o777 == 0o600
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute("ALTER TABLE deal OWNER TO postgres")
        c.execute(f"DROP ROLE {role}")
    before = table_fingerprints(pg.conninfo(crm_db))
    message = failed_restore(safety_backup=False)
    assert f"roles missing on {pg.host}:{pg.port}: {role};" in message and "--create-roles" in message
    assert "\n" not in message
    assert_untouched(pg, crm_db, before)
    # Without owners: the table belongs to the database's owner, never silently to a missing role.
    report = restore("latest", confirmed=True, safety_backup=False, keep_old=False, keep_ownership=False)
    assert report.tables["public.deal"] > 0
    # With --create-roles: the role comes back as it was, and owns its table again.
    restore("latest", confirmed=True, safety_backup=False, keep_old=False, create_roles=True)
    try:
        with psycopg.connect(pg.conninfo(crm_db)) as c:
            assert c.execute("SELECT rolconnlimit, rolcanlogin FROM pg_roles WHERE rolname = %s",
                             (role,)).fetchone() == (7, False)
            assert c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()[0] == hashed
            assert c.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'deal'").fetchone()[0] == role
    finally:
        with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
            c.execute(f"ALTER TABLE deal OWNER TO postgres; DROP ROLE {role}")


def test_a_swap_that_cannot_complete_puts_everything_back(pg, conn):
    from pgkeeper.tasks.swap import SwapFailed, swap_databases

    live, incoming, retire = "swap_live", "swap_incoming", "swap_retired"
    for name in (live, incoming, retire):
        create_database(pg, name)
    try:
        with psycopg.connect(pg.conninfo(live), autocommit=True) as c:
            c.execute("CREATE TABLE t AS SELECT 1 AS x")
        before = table_fingerprints(pg.conninfo(live))
        client = psycopg.connect(pg.conninfo(live))
        with pytest.raises(SwapFailed, match="already exists") as exc:  # the retired name is taken
            swap_databases(conn, live=live, incoming=incoming, retire_as=retire)
        assert "\n" not in str(exc.value)
        with pytest.raises(psycopg.OperationalError):  # its session was ended by the attempt
            client.execute("SELECT 1")
        client.close()
        assert table_fingerprints(pg.conninfo(live)) == before  # accepting connections again, same data
        assert database_exists(pg, incoming) and database_exists(pg, retire)
    finally:
        for name in (live, incoming, retire):
            drop_database(pg, name)


def test_a_retried_swap_counts_the_sessions_its_first_attempt_ended(pg, conn):
    """Ending a session is not undone when the attempt's transaction is: a swap that had to try
    again still reports the sessions its first attempt threw out."""
    from pgkeeper.tasks.swap import swap_databases

    live, incoming, retire = "swap_live2", "swap_incoming2", "swap_retired2"
    for name in (live, incoming):
        create_database(pg, name)
    clients = [psycopg.connect(pg.conninfo(live)) for _ in range(3)]
    # COMMENT ON DATABASE in an open transaction locks the database object: the first attempt's
    # rename waits for it past its lock timeout, after it has ended the three sessions.
    holder = psycopg.connect(pg.conninfo())
    holder.execute(f"COMMENT ON DATABASE {live} IS 'held'")
    release = threading.Timer(2.0, holder.commit)
    release.start()
    try:
        result = swap_databases(conn, live=live, incoming=incoming, retire_as=retire, lock_timeout_s=1)
        assert result.retired_as == retire
        assert result.terminated == 3
    finally:
        release.join()
        holder.close()
        for c in clients:
            c.close()
        for name in (live, incoming, retire):
            drop_database(pg, name)


def test_expired_old_copies_and_killed_restores_shadows_are_dropped_by_the_next_restore(
        pg, crm_db, env, repo):  # noqa: F811
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    backup()
    expired, fresh = f"{crm_db}_pre_restore_20200101_000000", f"{crm_db}_pre_restore_20990101_000000"
    for name, until in ((expired, "2020-01-04T00:00:00+00:00"), (fresh, "2099-01-04T00:00:00+00:00")):
        create_database(pg, name)
        with psycopg.connect(pg.conninfo(), autocommit=True) as c:
            c.execute(f"COMMENT ON DATABASE {name} IS 'pgkeeper pre-restore copy of {crm_db}, replaced by "
                      f"backup backup_20200101_000000 at 2020-01-01T00:00:00+00:00; keep until {until}'")
    # Shadows as a SIGKILLed restore leaves them: a day-old one, and one of a restore running now.
    dead, running = f"{crm_db}_restoring_dead01", f"{crm_db}_restoring_live01"
    now = datetime.now(UTC)
    for name, since in ((dead, now - timedelta(days=2)), (running, now - timedelta(minutes=5))):
        create_database(pg, name)
        with psycopg.connect(pg.conninfo(), autocommit=True) as c:
            c.execute(f"COMMENT ON DATABASE {name} IS 'pgkeeper restore in progress since "
                      f"{since.isoformat(timespec='seconds')}'")
    try:
        report = restore("latest", confirmed=True, safety_backup=False, keep_old_hours=0.01)
        assert not database_exists(pg, expired) and not database_exists(pg, dead)
        assert database_exists(pg, fresh) and database_exists(pg, report.old_copy) and database_exists(pg, running)
    finally:
        for name in [*old_copies(pg, crm_db), dead, running]:
            drop_database(pg, name)



def test_a_second_restore_into_the_same_database_is_refused_while_one_runs(pg, crm_db, env, repo):  # noqa: F811
    from prefect.concurrency.sync import concurrency

    from pgkeeper.tasks.restore_steps import restore_slot

    m, before = backup_then_change(pg, crm_db)
    with restore_slot(crm_db):  # another restore holds the database
        message = failed_restore(safety_backup=False)
        assert "another restore into" in message and "unchanged" in message
    assert_untouched(pg, crm_db, before)
    with concurrency(f"pgkeeper-restore-{crm_db}", occupy=1, timeout_seconds=5, strict=True):
        pass  # and the slot is free again


def test_properties_this_server_cannot_reproduce_are_refused_before_anything_changes(
        pg, crm_db, env, repo):  # noqa: F811
    m, before = backup_then_change(pg, crm_db)
    path = Path(repo.path) / "backups" / m.backup_id / "manifest.json"
    original = json.loads(path.read_text())
    for change, expected in (({"tablespace": "nowhere"}, "tablespace 'nowhere' does not exist on this server"),
                             ({"locale_provider": "icu", "icu_locale": "xx-NOWHERE"},
                              "ICU locale 'xx-NOWHERE' is not known to this server")):
        manifest = json.loads(json.dumps(original))
        manifest["database_properties"].update(change)
        repo.storage().write_manifest(m.backup_id, json.dumps(manifest).encode())
        message = failed_restore(safety_backup=False)
        assert f"{m.backup_id} cannot be restored as it was on {pg.host}:{pg.port}: {expected}" in message
        assert "\n" not in message
        assert_untouched(pg, crm_db, before)


def test_a_failed_safety_backup_holds_the_replaced_copy_until_one_is_listed(pg, crm_db, env, repo,  # noqa: F811
                                                                            caplog):
    """The safety backup is taken from the replaced copy after the swap. When it fails (here: the
    target refuses new connections, which its renamed copy keeps, so pg_dump cannot connect) the
    restore stands, and the copy is held, with keep_old=False and past its time, until a backup of
    it is listed; that backup is recorded under the target's name and comment, labelled pre-restore."""
    from pgkeeper.catalog import list_backups
    from pgkeeper.config import load_connection
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore
    from pgkeeper.tasks.swap import expire_old_copies

    m, before = backup_then_change(pg, crm_db)
    at_backup_counts = m.tables
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        c.execute(f"COMMENT ON DATABASE {crm_db} IS 'the CRM, live'")
        c.execute(f"ALTER DATABASE {crm_db} ALLOW_CONNECTIONS false")
    copy = None
    try:
        report = restore("latest", confirmed=True, keep_old=False, keep_old_hours=0)
        copy = report.old_copy
        assert copy and report.safety_backup_id is None
        assert "connect" in report.safety_backup_error and "\n" not in report.safety_backup_error
        assert f"it is kept as {copy} until one is listed" in report.safety_line()
        assert [b for b in list_backups(repo.local(), crm_db) if "pre-restore" in b.labels] == []
        with psycopg.connect(pg.conninfo(crm_db)) as c:  # the restore stands, in service
            assert c.execute("SELECT count(*) FROM company").fetchone()[0] == at_backup_counts["public.company"]

        # Past its time, with no safety backup: the next restore's expiry leaves it.
        conn = load_connection(None)
        caplog.clear()
        assert expire_old_copies(conn) == [] and database_exists(pg, copy)
        assert f"pre-restore copy {copy} is past its time but its safety backup was never listed: kept" in caplog.text

        with psycopg.connect(pg.conninfo(), autocommit=True) as c:
            c.execute(f"ALTER DATABASE {copy} ALLOW_CONNECTIONS true")
        safety = backup(database=copy)
        assert safety.database == crm_db and safety.labels == ["pre-restore"]
        assert safety.database_properties.comment == "the CRM, live"
        assert safety.tables == {t: n for t, (n, _) in before.items()}
        assert expire_old_copies(conn) == [copy] and not database_exists(pg, copy)
    finally:
        with psycopg.connect(pg.conninfo(), autocommit=True) as c:
            c.execute(f"ALTER DATABASE {crm_db} ALLOW_CONNECTIONS true")
        if copy:
            drop_database(pg, copy)

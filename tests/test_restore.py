"""The restore flow, as a user sees it: data back to the backup's state, nothing lost on the way."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pgkeeper.errors import BadName, NotFound
from tests.helpers import database_exists, drop_database, table_fingerprints
from tests.test_clusters import dump_text


@pytest.fixture
def env(pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The flows read the old scripts' variables (no blocks saved in the test API)."""
    for k, v in pg_env.items():
        monkeypatch.setenv(k, v)
    return pg_env


def old_copies(pg, target: str) -> list[str]:
    with psycopg.connect(pg.conninfo()) as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                        (target + "_pre_restore_%",)).fetchall()]


def leftovers(pg, target: str) -> list[str]:
    """Shadow databases a restore of `target` left behind (there must be none)."""
    with psycopg.connect(pg.conninfo()) as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                        (target + "_restoring_%",)).fetchall()]


@pytest.fixture
def cleanup_copies(pg, crm_db):
    yield
    for name in old_copies(pg, crm_db) + leftovers(pg, crm_db):
        drop_database(pg, name)


def change_data(pg, db: str) -> None:
    with psycopg.connect(pg.conninfo(db), autocommit=True) as c:
        c.execute("DELETE FROM activity WHERE id % 3 = 0")
        c.execute("UPDATE company SET name = 'changed ' || id WHERE id % 2 = 0")
        c.execute("CREATE TABLE added_after_backup (x int)")


def test_replace_puts_back_the_backup_state_and_keeps_the_old_copy(pg, crm_db, env, repo, cleanup_copies):
    from pgkeeper.catalog import list_backups
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    at_backup = table_fingerprints(pg.conninfo(crm_db))
    manifest = backup()
    change_data(pg, crm_db)
    changed = table_fingerprints(pg.conninfo(crm_db))
    assert changed != at_backup
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        c.execute(f"COMMENT ON DATABASE {crm_db} IS 'the CRM, live'")

    report = restore("latest", confirmed=True)

    assert table_fingerprints(pg.conninfo(crm_db)) == at_backup
    assert report.backup_id == manifest.backup_id
    assert report.tables == manifest.tables
    [old] = old_copies(pg, crm_db)
    assert report.old_copy == old and report.old_copy_keep_until is not None
    assert table_fingerprints(pg.conninfo(old)) == changed
    assert leftovers(pg, crm_db) == []
    # The safety backup of what was replaced is in the repository, labelled.
    safety = [m for m in list_backups(repo.local(), crm_db) if "pre-restore" in m.labels]
    assert [m.backup_id for m in safety] == [report.safety_backup_id]
    assert safety[0].tables == {t: n for t, (n, _) in changed.items()}
    # It was taken from the kept copy after the swap, recorded under the name and comment the
    # database had; the copy's mark says so, and restored, the safety backup is that copy.
    assert safety[0].database_properties.comment == "the CRM, live"
    with psycopg.connect(pg.conninfo()) as c:
        [mark] = c.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (old,)).fetchone()
    assert f"safety backup {report.safety_backup_id}" in mark
    back = crm_db + "_safety"
    try:
        restore(report.safety_backup_id, mode="new", target=back)
        assert dump_text(pg, back) == dump_text(pg, old)
    finally:
        drop_database(pg, back)
    # ... and `latest` still means the regular backup, not the safety copy.
    again = restore("latest", confirmed=True, safety_backup=False, keep_old=False)
    assert again.backup_id == manifest.backup_id
    assert len(old_copies(pg, crm_db)) == 1


def test_into_a_new_database_leaves_the_source_untouched(pg, crm_db, env, repo):
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    at_backup = table_fingerprints(pg.conninfo(crm_db))
    backup()
    change_data(pg, crm_db)
    changed = table_fingerprints(pg.conninfo(crm_db))
    copy = crm_db + "_copy"
    try:
        report = restore("latest", mode="new", target=copy)
        assert report.old_copy is None and report.safety_backup_id is None
        assert table_fingerprints(pg.conninfo(copy)) == at_backup
        assert table_fingerprints(pg.conninfo(crm_db)) == changed
        assert old_copies(pg, crm_db) == [] and leftovers(pg, copy) == []
        # A second restore into the same (now existing) name is refused, the copy left alone.
        with pytest.raises(BadName, match="already exists"):
            restore("latest", mode="new", target=copy)
        assert table_fingerprints(pg.conninfo(copy)) == at_backup
    finally:
        drop_database(pg, copy)


def test_replace_of_a_database_that_does_not_exist_creates_it(pg, crm_db, env, repo):
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    at_backup = table_fingerprints(pg.conninfo(crm_db))
    backup()
    drop_database(pg, crm_db)
    report = restore("latest", confirmed=True)
    assert report.safety_backup_id is None and report.old_copy is None
    assert table_fingerprints(pg.conninfo(crm_db)) == at_backup


def test_open_and_reconnecting_sessions_on_the_target_are_ended(pg, crm_db, env, repo, cleanup_copies):
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    at_backup = table_fingerprints(pg.conninfo(crm_db))
    backup()
    change_data(pg, crm_db)
    idle = psycopg.connect(pg.conninfo(crm_db))
    in_tx = psycopg.connect(pg.conninfo(crm_db))
    in_tx.execute("SELECT count(*) FROM company")  # holds a transaction open (and a lock)
    stop = threading.Event()
    seen: list[str] = []

    def client() -> None:
        # An application that reconnects as soon as it is thrown out.
        while not stop.is_set():
            try:
                with psycopg.connect(pg.conninfo(crm_db), connect_timeout=2) as c:
                    while not stop.is_set():
                        seen.append(c.execute("SELECT current_database()").fetchone()[0])
                        time.sleep(0.01)
            except psycopg.Error:
                time.sleep(0.01)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        report = restore("latest", confirmed=True, safety_backup=False)
    finally:
        stop.set()
        t.join(10)
        for c in (idle, in_tx):
            c.close()
    assert report.terminated_sessions >= 3
    assert table_fingerprints(pg.conninfo(crm_db)) == at_backup
    assert seen  # the client did work before (and after) the swap


def test_extensions_in_the_dump_come_back(pg, crm_db, env, repo, cleanup_copies):
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute("CREATE EXTENSION hstore")
        c.execute("CREATE EXTENSION pgcrypto")
        c.execute("CREATE TABLE tagged (id int PRIMARY KEY, tags hstore, h bytea)")
        c.execute("INSERT INTO tagged SELECT i, hstore('k', i::text), digest(i::text, 'sha256') "
                  "FROM generate_series(1, 500) i")
    at_backup = table_fingerprints(pg.conninfo(crm_db))
    backup()
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute("DELETE FROM tagged WHERE id > 10")
    restore("latest", confirmed=True, safety_backup=False)
    assert table_fingerprints(pg.conninfo(crm_db)) == at_backup
    with psycopg.connect(pg.conninfo(crm_db)) as c:
        assert c.execute("SELECT tags -> 'k' FROM tagged WHERE id = 42").fetchone()[0] == "42"
        assert c.execute("SELECT encode(digest('x', 'sha1'), 'hex')").fetchone()[0].startswith("11f6ad8e")


@pytest.mark.parametrize("name, error", [
    ("../etc", BadName), ("backup_20240315_143022", NotFound), ("backup_2024_bad", BadName),
])
def test_bad_names_change_nothing(pg, crm_db, env, repo, name, error):
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    backup()
    before = table_fingerprints(pg.conninfo(crm_db))
    with pytest.raises(error) as exc:
        restore(name, confirmed=True)
    assert "\n" not in str(exc.value)
    assert table_fingerprints(pg.conninfo(crm_db)) == before
    assert old_copies(pg, crm_db) == [] and leftovers(pg, crm_db) == []


def test_latest_with_no_backups_and_bad_targets(pg, crm_db, env, repo):
    from pgkeeper.flows.restore import restore

    before = table_fingerprints(pg.conninfo(crm_db))
    with pytest.raises(NotFound, match="'latest' has nothing to point to"):
        restore("latest", confirmed=True)
    from pgkeeper.flows.backup import backup

    backup()
    for target in ("../etc", "a b; drop", "postgres"):
        with pytest.raises(BadName):
            restore("latest", target=target, confirmed=True)
    assert not database_exists(pg, "../etc")
    assert table_fingerprints(pg.conninfo(crm_db)) == before


def test_restore_from_s3_when_the_local_copy_is_gone(pg, crm_db, env, repo, s3_endpoint, s3_bucket, monkeypatch):
    import shutil

    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    for k, v in {"S3_BUCKET": s3_bucket, "S3_PREFIX": "restore-test", "ENABLE_S3_UPLOAD": "true",
                 "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(k, v)
    at_backup = table_fingerprints(pg.conninfo(crm_db))
    manifest = backup()
    assert manifest.encryption == "age"  # offsite on: encrypted by default
    original = plain_dump(pg, crm_db)
    shutil.rmtree(repo.path)  # the local disk is lost: only the bucket has it
    change_data(pg, crm_db)
    copy = crm_db + "_from_s3"
    try:
        report = restore(manifest.backup_id, mode="new", target=copy, source="s3")
        assert report.source == "s3" and report.tables == manifest.tables
        assert table_fingerprints(pg.conninfo(copy)) == at_backup
        assert plain_dump(pg, copy) == original  # PostgreSQL's own word: owners, grants, data
    finally:
        drop_database(pg, copy)


def plain_dump(pg, db: str) -> str:
    """pg_dump's SQL of `db`, without the per-run \\restrict key lines newer pg_dumps write."""
    import subprocess

    from pgkeeper import pgtools

    out = subprocess.run([pgtools.tool("pg_dump"), "-w", db], env={**pg.libpq_env(db)}, check=True,
                         capture_output=True, text=True).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


def database_grants(pg, name: str) -> set[tuple[str, str]]:
    with psycopg.connect(pg.conninfo()) as c:
        return set(c.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type "
            "FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a WHERE d.datname = %s",
            (name,)).fetchall())


def test_the_restored_database_keeps_the_targets_owner_settings_and_grants(pg, crm_db, env, repo, cleanup_copies):
    """A dump (without --create) carries no database-level owner or settings: the shadow takes them
    from the database it replaces, so applications see the same database afterwards."""
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    role = f"app_{crm_db}"
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN")
        c.execute(f"ALTER DATABASE {crm_db} OWNER TO {role}")
        c.execute(f"ALTER DATABASE {crm_db} SET work_mem = '7MB'")
        c.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {crm_db} FROM PUBLIC")
        c.execute(f"GRANT CONNECT ON DATABASE {crm_db} TO pg_monitor")
    try:
        backup()
        restore("latest", confirmed=True, safety_backup=False)
        with psycopg.connect(pg.conninfo()) as c:
            owner, settings = c.execute(
                "SELECT pg_get_userbyid(d.datdba), s.setconfig FROM pg_database d LEFT JOIN pg_db_role_setting s "
                "ON s.setdatabase = d.oid AND s.setrole = 0 WHERE d.datname = %s", (crm_db,)).fetchone()
        assert owner == role and settings == ["work_mem=7MB"]
        [old] = old_copies(pg, crm_db)
        assert database_grants(pg, crm_db) == database_grants(pg, old)
        assert ("PUBLIC", "CONNECT") not in database_grants(pg, crm_db)
        assert ("pg_monitor", "CONNECT") in database_grants(pg, crm_db)
        with psycopg.connect(pg.conninfo(crm_db)) as c:
            assert c.execute("SHOW work_mem").fetchone()[0] == "7MB"
    finally:
        with psycopg.connect(pg.conninfo(), autocommit=True) as c:
            for name in [crm_db, *old_copies(pg, crm_db)]:
                c.execute(f"ALTER DATABASE {name} OWNER TO postgres")
        for name in old_copies(pg, crm_db):
            drop_database(pg, name)
        with psycopg.connect(pg.conninfo(), autocommit=True) as c:
            c.execute(f"DROP ROLE {role}")


def test_restore_steps_ask_for_no_tag_slots_and_the_safety_backup_keeps_the_tag(pg, crm_db, env, repo,
                                                                              cleanup_copies):
    """The restore's task runs carry no `pgkeeper` tag (no concurrency-slot round trips per step);
    the flow run keeps it, and so does the safety backup's run, which the failure automation must
    still match."""
    from prefect import tags
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore
    from tests.helpers import wait_for

    backup()
    with tags("pgkeeper"):  # as runinfo.tag_every_run() gives every run the command line starts
        state = restore("latest", confirmed=True, keep_old=False, return_state=True)
    report = state.result()
    assert report.safety_backup_id
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        assert "pgkeeper" in client.read_flow_run(run_id).tags

        def steps():  # noqa: ANN202
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            names = {t.name.rsplit("-", 1)[0] for t in runs}
            return runs if {"restore-shadow", "check-content", "swap-into-place", "drop-database"} <= names else None

        tasks = wait_for(steps, 60, "the restore's task runs")
        [safety] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
    steps_run = [t for t in tasks if not t.name.startswith("backup-")]  # backup-<id>: the subflow's link, not run
    assert all("pgkeeper" not in t.tags for t in steps_run), [(t.name, t.tags) for t in steps_run]
    assert "pgkeeper" in safety.tags and "pre-restore" in safety.tags
    # Found under the database it backs up, not under the copy's passing name.
    assert f"db:{crm_db}" in safety.tags and not any(t.startswith(f"db:{crm_db}_pre_restore") for t in safety.tags)
    assert safety.name.startswith(f"backup {crm_db} ")

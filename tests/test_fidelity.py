"""A restore gives back exactly what was there, checked as a DBA would check it.

A realistic application database (tests/app_schema.py) in four flavours (UTF8/libc, ICU sv-SE,
LATIN1, SQL_ASCII) is backed up and restored with the `pgkeeper` command line: into a new
database, in replace mode with a client connected, onto a second server that has none of the
roles, and without owners. Afterwards `pg_dump --schema-only --create` and `--data-only` of the
original and the copy are identical (database name aside), the database's own properties are
equal and every application role can do exactly what it could before, and nothing more.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgkeeper.localcluster import LocalCluster, throwaway_cluster
from tests.app_schema import (
    EXTENSION,
    LO_OID,
    PG_BINDIR,
    VARIANTS,
    AppRoles,
    Variant,
    build_app_database,
    create_app_roles,
    differences,
    drop_app_roles,
    icu_locale_available,
    install_test_extension,
    role_conninfo,
    snapshot,
    tool_env,
)
from tests.helpers import run_cli, run_cli_here, table_fingerprints, waited_safety_backup

PREFIX = f"fid{uuid.uuid4().hex[:6]}_"
CLI_TIMEOUT = 180
PARALLEL_CLI = 2  # concurrent pgkeeper processes (the machines have 2 cores)
BACKUP_ID = re.compile(r"\bbackup_\d{8}_\d{6}(?:_[a-z0-9][a-z0-9-]*)?\b")  # the server key follows (issue 16)


# ---------------------------------------------------------------------------------------------
# Module fixtures: built once, shared by every test here; everything made is gone afterwards
# ---------------------------------------------------------------------------------------------

@dataclass
class Backup:
    variant: str
    database: str
    repo: Path
    backup_id: str | None
    output: str


@dataclass
class App:
    """The application databases on the session cluster, their snapshots and backups."""

    pg: LocalCluster
    roles: AppRoles
    repos: Path
    databases: dict[str, str] = field(default_factory=dict)  # variant -> database name
    original: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> snapshot at build
    skipped: dict[str, str] = field(default_factory=dict)  # variant -> why it was not built
    fingerprints: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)  # UTF8 variants
    _backups: dict[str, Backup] = field(default_factory=dict)
    _into: dict[str, Done] = field(default_factory=dict)

    def env(self, database: str, repo: Path, cluster: LocalCluster | None = None) -> dict[str, str]:
        """The old scripts' variables, as a user sets them."""
        c = cluster or self.pg
        return {"POSTGRES_HOST": c.host, "POSTGRES_PORT": str(c.port), "POSTGRES_USER": "postgres",
                "POSTGRES_PASSWORD": c.password, "POSTGRES_DB": database, "BACKUP_DIR": str(repo)}

    def backup(self, variant: str) -> Backup:
        """`pgkeeper backup` of the variant's database into its own repository.

        The first call backs up every variant (two CLI processes at a time, one repository each):
        Prefect's start-up dominates a small backup, and one process alone leaves a core idle.
        """
        if variant in self.skipped:
            pytest.skip(self.skipped[variant])
        if not self._backups:
            for v, db in self.databases.items():
                repo = self.repos / v
                done = in_process("backup", self.env(db, repo))
                found = BACKUP_ID.search(done.stdout)
                self._backups[v] = Backup(v, db, repo, found.group(0) if found and done.returncode == 0 else None,
                                          tail(done))
        b = self._backups[variant]
        assert b.backup_id, f"pgkeeper backup of the {variant} database failed:\n{b.output}"
        return b

    def restored_into(self, variant: str) -> tuple[str, Done]:
        """`pgkeeper restore latest --into <new>` of the variant's backup: (new name, the run).

        The first call restores every variant that backed up (two at a time, distinct targets).
        """
        self.backup(variant)
        if not self._into:
            ok = [v for v, b in self._backups.items() if b.backup_id]

            for v in ok:
                b = self._backups[v]
                self._into[v] = in_process("restore", self.env(b.database, b.repo), target=self.name(v + "_into"))
        return self.name(variant + "_into"), self._into[variant]

    def copy_repo(self, variant: str, name: str) -> Path:
        """A copy of the variant's repository, for a test that adds backups to it."""
        src = self.backup(variant).repo
        dst = self.repos / name
        shutil.copytree(src, dst)
        return dst

    def name(self, suffix: str) -> str:
        return PREFIX + suffix


@dataclass
class Done:
    """What a flow run in this process did, shaped like a finished command (most tests here run the
    flows in-process: a `pgkeeper` process costs seconds of Prefect start-up each)."""

    returncode: int
    stdout: str
    stderr: str = ""


def in_process(what: str, env: dict[str, str], target: str | None = None, backup: str = "latest",
               **params: Any) -> Done:
    """Run the backup flow, or a restore of `backup` `--into target`, with the old scripts' variables set."""
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        if what == "backup":
            from pgkeeper.flows.backup import backup

            m = backup(connection_block=None, repository_block=None)
            return Done(0, f"backup {m.backup_id} done")
        from pgkeeper.flows.restore import restore

        report = restore(backup, mode="new", target=target, connection_block="none", repository_block="none",
                         **params)
        return Done(0, f"restored {report.backup_id} into {report.target}")
    except Exception as exc:  # reported by the test's assertion, with the line
        return Done(1, "", f"pgkeeper: error: {exc}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tail(done: Any, lines: int = 25) -> str:
    """The end of a CLI run's output, for assertion messages."""
    text = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return "\n".join(text.splitlines()[-lines:])


def databases_with_prefix(cluster: LocalCluster) -> list[str]:
    with psycopg.connect(cluster.conninfo()) as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) "
                                        "ORDER BY 1", (PREFIX,)).fetchall()]


def roles_with_prefix(cluster: LocalCluster) -> list[str]:
    with psycopg.connect(cluster.conninfo()) as c:
        return [r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) ORDER BY 1",
                                        (PREFIX,)).fetchall()]


def drop_prefixed_databases(cluster: LocalCluster) -> None:
    """Every database a test here made, including old copies and shadows pgkeeper named after them."""
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        for db in databases_with_prefix(cluster):
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


@pytest.fixture(scope="module")
def test_extension() -> Iterator[Path]:
    """pgkeeper_cfgext in the server's extension directory (shared by every cluster here)."""
    with install_test_extension(PG_BINDIR) as extdir:
        yield extdir
    leftover = sorted(p.name for p in extdir.glob(f"{EXTENSION}*"))
    assert not leftover, f"extension files left behind: {leftover}"


@pytest.fixture(scope="module")
def app(pg: LocalCluster, test_extension: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    admin = pg.conninfo()
    roles = create_app_roles(admin, PREFIX, password="App-pw-" + uuid.uuid4().hex[:8])
    state = App(pg, roles, tmp_path_factory.mktemp("fidelity-repos"))
    try:
        for v in VARIANTS:
            if v.icu_locale and not icu_locale_available(admin, v.icu_locale):
                state.skipped[v.name] = f"this server's ICU does not know {v.icu_locale}"
                continue
            db = state.name(v.name)
            build_app_database(admin, db, roles, **v.options())
            state.databases[v.name] = db
            state.original[v.name] = snapshot(admin, db, roles)
            if v.name == "default":
                state.fingerprints[v.name] = table_fingerprints(pg.conninfo(db))
        yield state
    finally:
        drop_prefixed_databases(pg)
        drop_app_roles(admin, roles)
        left = databases_with_prefix(pg) + roles_with_prefix(pg)
        assert not left, f"left behind on the session cluster: {left}"


@pytest.fixture(scope="module")
def second_cluster(pg: LocalCluster, test_extension: Path) -> Iterator[LocalCluster]:
    """Another server, with none of the application's roles (the disaster case)."""
    with throwaway_cluster("pgkeeper-fid2-", pg.password) as (cluster, _base):
        yield cluster
    assert not cluster.is_running()


def assert_same(expected: dict[str, Any], actual: dict[str, Any], what: str) -> None:
    found = differences(expected, actual)
    assert not found, f"{what} differs from the original:\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------
# a. every variant: backup, then restore --into a new database
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_restore_into_a_new_database_gives_back_exactly_what_was_there(app: App, variant: str) -> None:
    new, done = app.restored_into(variant)
    assert done.returncode == 0, tail(done)
    assert_same(app.original[variant], snapshot(app.pg.conninfo(), new, app.roles),
                f"{variant}: restore --into {new}")


# ---------------------------------------------------------------------------------------------
# b. replace mode, with an application client connected
# ---------------------------------------------------------------------------------------------

def test_replace_with_a_client_connected_keeps_everything_and_the_search_path_works(app: App) -> None:
    b = app.backup("default")
    repo = app.copy_repo("default", "default-replace")  # the safety backup lands in the copy
    r = app.roles
    held = psycopg.connect(role_conninfo(app.pg.conninfo(), b.database, r.app, r.password))
    held.execute("SELECT count(*) FROM items").fetchone()
    held.commit()
    try:
        done = run_cli_here("restore", "latest", "--yes", env=app.env(b.database, repo))
        assert done.returncode == 0, tail(done)
        copy = waited_safety_backup(done.stdout)
        with pytest.raises(psycopg.OperationalError):  # the held session was ended
            held.execute("SELECT 1").fetchone()
    finally:
        held.close()

    assert_same(app.original["default"], snapshot(app.pg.conninfo(), b.database, r),
                "replace restore of the default database")
    # The application logs in and its unqualified queries find their tables (search_path = app, public).
    with psycopg.connect(role_conninfo(app.pg.conninfo(), b.database, r.app, r.password)) as c:
        assert c.execute("SHOW search_path").fetchone()[0] == "app, public"
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 400
        assert c.execute("SHOW statement_timeout").fetchone()[0] == "30s"
    with psycopg.connect(app.pg.conninfo()) as c:
        assert c.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (b.database,)).fetchone() == (
            True,)
        [mark] = c.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (copy,)).fetchone()
    # The safety backup, taken from the replaced copy after the swap, is that database whole: the
    # replaced database was the original, and restored, its safety backup equals it (owners,
    # grants, settings and comment included).
    from pgkeeper.old_copy import read_mark

    safety_id = read_mark(mark).safety
    assert safety_id and safety_id.startswith("backup_"), mark
    back = app.name("default_safety")
    done = in_process("restore", app.env(b.database, repo), target=back, backup=safety_id)
    assert done.returncode == 0, tail(done)
    assert_same(app.original["default"], snapshot(app.pg.conninfo(), back, r),
                "the safety backup of the replaced database")


# ---------------------------------------------------------------------------------------------
# c. onto a second server that has none of the roles
# ---------------------------------------------------------------------------------------------

_ROLE_ATTRS = ("SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, "
               "rolbypassrls, rolconnlimit, rolvaliduntil, rolpassword, "
               "(SELECT array_agg(setconfig) FROM pg_db_role_setting s WHERE s.setrole = a.oid), "
               "(SELECT array_agg(m.roleid::regrole::text ORDER BY 1) FROM pg_auth_members m "
               " WHERE m.member = a.oid) "
               "FROM pg_authid a WHERE rolname = %s")


def _cluster_state(cluster: LocalCluster) -> tuple[list[str], list[str]]:
    with psycopg.connect(cluster.conninfo()) as c:
        dbs = [x[0] for x in c.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()]
        roles = [x[0] for x in c.execute("SELECT rolname FROM pg_roles ORDER BY 1").fetchall()]
    return dbs, roles


def test_restore_onto_a_server_without_the_roles(app: App, second_cluster: LocalCluster) -> None:
    b = app.backup("default")
    r = app.roles
    admin2 = second_cluster.conninfo()
    # One of the roles already exists there, with other attributes: it must stay as it is.
    with psycopg.connect(admin2, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEDB CONNECTION LIMIT 7").format(sql.Identifier(r.owner)))
        c.execute(sql.SQL("ALTER ROLE {} SET work_mem = '1MB'").format(sql.Identifier(r.owner)))
        existing = c.execute(_ROLE_ATTRS, (r.owner,)).fetchone()
    missing = [r.rw, r.ro, r.app, r.nobody]
    target = app.name("default_elsewhere")
    env = app.env(b.database, b.repo, cluster=second_cluster)
    before = _cluster_state(second_cluster)

    refused = run_cli("restore", b.backup_id, "--into", target, env=env, timeout=CLI_TIMEOUT)
    assert refused.returncode != 0, tail(refused)
    errors = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert errors and errors[-1].startswith("pgkeeper: error"), tail(refused)
    assert all(role in errors[-1] for role in missing), f"the error line does not name {missing}: {errors[-1]}"
    assert "Traceback" not in refused.stderr, tail(refused)
    assert _cluster_state(second_cluster) == before, "a refused restore changed the second server"

    done = run_cli_here("restore", b.backup_id, "--into", target, "--create-roles", env=env)
    assert done.returncode == 0, tail(done)
    expected = app.original["default"]
    actual = snapshot(admin2, target, r)
    assert_same({k: expected[k] for k in ("schema", "data", "probe")}, actual,
                "restore onto the second server with --create-roles")
    with psycopg.connect(admin2) as c:
        assert c.execute(_ROLE_ATTRS, (r.owner,)).fetchone() == existing, "an existing role was altered"
        made = {x[0] for x in c.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)",
                                        (PREFIX,)).fetchall()}
    assert made == {r.owner, *missing}


# ---------------------------------------------------------------------------------------------
# d. verify: passes, and picks the configured database's backup
# ---------------------------------------------------------------------------------------------

def test_verify_passes_and_takes_the_configured_databases_backup(app: App) -> None:
    a = app.backup("default")
    other = "latin1" if "latin1" in app.databases else "sqlascii"
    repo = app.copy_repo("default", "verify")
    later = in_process("backup", app.env(app.databases[other], repo))
    assert later.returncode == 0, tail(later)
    later_id = BACKUP_ID.search(later.stdout)
    assert later_id and later_id.group(0) != a.backup_id

    done = run_cli_here("verify", env=app.env(a.database, repo))
    assert done.returncode == 0, tail(done)
    assert a.backup_id in done.stdout and a.database in done.stdout, tail(done)
    assert later_id.group(0) not in done.stdout, f"verify took {app.databases[other]}'s backup:\n{tail(done)}"


# ---------------------------------------------------------------------------------------------
# e. the explicit no-owner choice: owned by the database owner, revoked PUBLIC stays revoked
# ---------------------------------------------------------------------------------------------

_SUPERUSER_OWNED = """
    WITH su AS (SELECT oid FROM pg_roles WHERE rolsuper),
    -- Members of (trusted) extensions belong to the bootstrap superuser whoever creates them.
    member AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e')
    SELECT 'relation ' || oid::regclass::text FROM pg_class
        WHERE oid >= 16384 AND relowner IN (SELECT oid FROM su)
          AND relnamespace <> 'pg_toast'::regnamespace AND relkind NOT IN ('i', 'I')
          AND ('pg_class'::regclass, oid) NOT IN (SELECT * FROM member)
    UNION ALL SELECT 'function ' || oid::regprocedure::text FROM pg_proc
        WHERE oid >= 16384 AND proowner IN (SELECT oid FROM su)
          AND ('pg_proc'::regclass, oid) NOT IN (SELECT * FROM member)
    UNION ALL SELECT 'schema ' || nspname FROM pg_namespace
        WHERE oid >= 16384 AND nspowner IN (SELECT oid FROM su)
    UNION ALL SELECT 'type ' || oid::regtype::text FROM pg_type
        WHERE oid >= 16384 AND typowner IN (SELECT oid FROM su) AND typrelid = 0 AND typelem = 0
          AND ('pg_type'::regclass, oid) NOT IN (SELECT * FROM member)
    UNION ALL SELECT 'large object ' || oid FROM pg_largeobject_metadata
        WHERE lomowner IN (SELECT oid FROM su)
    UNION ALL SELECT 'publication ' || pubname FROM pg_publication
        WHERE pubowner IN (SELECT oid FROM su)
    ORDER BY 1"""


def test_no_owner_gives_objects_to_the_database_owner_and_keeps_revoked_execute(app: App) -> None:
    b = app.backup("default")
    r = app.roles
    new = app.name("default_noowner")
    done = in_process("restore", app.env(b.database, b.repo), target=new, keep_ownership=False)
    assert done.returncode == 0, tail(done)
    with psycopg.connect(app.pg.conninfo(new)) as c:
        assert c.execute(_SUPERUSER_OWNED).fetchall() == []
        owners = c.execute("""
            SELECT DISTINCT r.rolname FROM pg_class k JOIN pg_roles r ON r.oid = k.relowner
            WHERE k.relnamespace = 'app'::regnamespace
            UNION SELECT r.rolname FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
            WHERE p.pronamespace = 'app'::regnamespace
            UNION SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'app'
            UNION SELECT lomowner::regrole::text FROM pg_largeobject_metadata WHERE oid = %s""",
                           (LO_OID,)).fetchall()
        assert owners == [(r.owner,)]
        assert c.execute("SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database()"
                         ).fetchone() == (r.owner,)
        public_execute = c.execute("""
            SELECT count(*) FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
            WHERE p.oid = 'app.whoami_definer()'::regprocedure AND a.grantee = 0
              AND a.privilege_type = 'EXECUTE'""").fetchone()[0]
        assert public_execute == 0, "EXECUTE on the SECURITY DEFINER function is granted to PUBLIC"
        assert c.execute("SELECT has_function_privilege(%s, 'app.whoami_definer()', 'EXECUTE')",
                         (r.nobody,)).fetchone() == (False,)
    assert table_fingerprints(app.pg.conninfo(new)) == app.fingerprints["default"]


def test_helpers_find_no_difference_in_a_copy_made_by_hand(app: App, tmp_path: Path) -> None:
    """pg_dump -Fc | pg_restore --create (roles present) is what the helpers must call equal."""
    admin = app.pg.conninfo()
    v = Variant("handcopy", encoding="SQL_ASCII", lc_collate="C", lc_ctype="C")  # raw bytes: the hardest
    db = app.name(v.name)
    build_app_database(admin, db, app.roles, **v.options())
    original = snapshot(admin, db, app.roles)
    dump = tmp_path / "db.dump"
    subprocess.run([str(PG_BINDIR / "pg_dump"), "-Fc", "-f", str(dump)], env=tool_env(admin, db), check=True)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(db), sql.Identifier(db + "_orig")))
    subprocess.run([str(PG_BINDIR / "pg_restore"), "--create", "--exit-on-error", "-d", "postgres", str(dump)],
                   env=tool_env(admin, "postgres"), check=True, capture_output=True)
    assert_same(original, snapshot(admin, db, app.roles), "a hand-made pg_dump/pg_restore --create copy")
    assert differences(original, snapshot(admin, db + "_orig", app.roles)) == []

    # ... and they are not blind: a changed value, a dropped grant, a mangled list setting.
    r = app.roles
    with psycopg.connect(app.pg.conninfo(db), autocommit=True) as c:
        c.execute("UPDATE app.items SET name = 'changed' WHERE id = 7")
        c.execute(sql.SQL("REVOKE SELECT ON app.items FROM {}").format(sql.Identifier(r.ro)))
        c.execute(sql.SQL("ALTER DATABASE {} SET search_path = '\"app, public\"'").format(sql.Identifier(db)))
    found = "\n".join(differences(original, snapshot(admin, db, r)))
    for expected in ("pg_dump data differs", "\tchanged\t", "pg_dump schema differs", "database property settings",
                     f"{r.ro} select_items: ok", f"{r.app} unqualified_select: ok"):
        assert expected in found, f"{expected!r} not reported in:\n{found}"

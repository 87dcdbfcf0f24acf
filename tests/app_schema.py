"""A realistic application database, and the helpers that prove two databases are the same.

The builder makes what a real application has (roles, owners, grants, default privileges,
a SECURITY DEFINER function, row-level security, rules, triggers, extensions with a
configuration table, inheritance, partitions, large objects, database-level settings ...),
in several encodings and locale providers. The comparison helpers look at it the way a
database administrator would after a restore: `pg_dump` of schema and data, the database's
own properties, and what each role can and cannot do.

Nothing here imports pgkeeper: the helpers must not share the code they check.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))
EXTENSION = "pgkeeper_cfgext"
LO_OID = 424242

# ---------------------------------------------------------------------------------------------
# The test extension: a configuration table registered with pg_extension_config_dump
# ---------------------------------------------------------------------------------------------

_CONTROL = """\
# pgkeeper's test extension: a configuration table whose user rows pg_dump must dump
comment = 'pgkeeper test extension with a configuration table'
default_version = '1.0'
relocatable = false
superuser = true
trusted = true
"""

_SCRIPT = """\
\\echo Use "CREATE EXTENSION pgkeeper_cfgext" to load this file. \\quit
CREATE TABLE @extschema@.cfg_table (
    key text PRIMARY KEY,
    value text,
    system boolean NOT NULL DEFAULT false
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.cfg_table', 'WHERE NOT system');
INSERT INTO @extschema@.cfg_table (key, value, system) VALUES
    ('version', '1.0', true), ('mode', 'strict', true), ('retention_days', '30', true);
CREATE FUNCTION @extschema@.cfg_get(k text) RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT value FROM @extschema@.cfg_table WHERE key = k $$;
"""


def _sharedir(bindir_or_sharedir: str | os.PathLike[str]) -> Path:
    """PostgreSQL's share directory, from a bindir (asks its pg_config) or given directly."""
    path = Path(bindir_or_sharedir)
    if (path / "pg_config").exists():
        out = subprocess.run([str(path / "pg_config"), "--sharedir"], check=True, capture_output=True, text=True)
        return Path(out.stdout.strip())
    return path


@contextmanager
def install_test_extension(bindir_or_sharedir: str | os.PathLike[str] = PG_BINDIR) -> Iterator[Path]:
    """Write `pgkeeper_cfgext` into the server's extension directory; remove it afterwards.

    Yields the extension directory. Only the two files written here are removed.
    """
    extdir = _sharedir(bindir_or_sharedir) / "extension"
    files = {extdir / f"{EXTENSION}.control": _CONTROL, extdir / f"{EXTENSION}--1.0.sql": _SCRIPT}
    written: list[Path] = []
    try:
        for path, text in files.items():
            path.write_text(text)
            path.chmod(0o644)
            written.append(path)
        yield extdir
    finally:
        for path in written:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Roles
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppRoles:
    """The application's roles (all names start with `prefix`); logins share `password`."""

    prefix: str
    password: str

    @property
    def owner(self) -> str:  # NOLOGIN, owns the database and the schema
        return self.prefix + "owner"

    @property
    def rw(self) -> str:  # NOLOGIN group: read-write
        return self.prefix + "rw"

    @property
    def ro(self) -> str:  # LOGIN: read-only reporting user
        return self.prefix + "ro"

    @property
    def app(self) -> str:  # LOGIN: the application, member of rw, with role settings
        return self.prefix + "app"

    @property
    def nobody(self) -> str:  # LOGIN: no grants at all (CONNECT revoked from PUBLIC)
        return self.prefix + "nobody"

    @property
    def all(self) -> list[str]:
        return [self.owner, self.rw, self.ro, self.app, self.nobody]

    @property
    def logins(self) -> list[str]:
        return [self.ro, self.app, self.nobody]


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def create_app_roles(conninfo_admin: str, prefix: str, password: str = "app-Pw-1") -> AppRoles:
    """Create the application's roles on the server of `conninfo_admin` (a superuser)."""
    roles = AppRoles(prefix, password)
    with psycopg.connect(conninfo_admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(_ident(roles.owner)))
        c.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(_ident(roles.rw)))
        for login in roles.logins:
            c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(_ident(login), sql.Literal(password)))
        c.execute(sql.SQL("GRANT {} TO {}").format(_ident(roles.rw), _ident(roles.app)))
        c.execute(sql.SQL("ALTER ROLE {} SET lock_timeout = '5s'").format(_ident(roles.app)))
        c.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 20").format(_ident(roles.app)))
    return roles


def drop_app_roles(conninfo_admin: str, roles: AppRoles | str) -> None:
    """Drop the roles (by prefix), first their objects and privileges in every database."""
    prefix = roles.prefix if isinstance(roles, AppRoles) else roles
    with psycopg.connect(conninfo_admin, autocommit=True) as c:
        names = [r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)",
                                         (prefix,)).fetchall()]
        if not names:
            return
        dbs = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datallowconn").fetchall()]
    role_list = sql.SQL(", ").join(_ident(n) for n in names)
    for db in dbs:
        params = {**conninfo_to_dict(conninfo_admin), "dbname": db}
        try:
            with psycopg.connect(make_conninfo(**params), autocommit=True) as c:
                c.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(role_list))
                # One role at a time: DROP OWNED BY a, b fails with "could not find tuple for
                # default ACL" when one ALTER DEFAULT PRIVILEGES entry involves both roles.
                for n in names:
                    c.execute(sql.SQL("DROP OWNED BY {}").format(_ident(n)))
        except psycopg.OperationalError:
            continue  # dropped meanwhile
    with psycopg.connect(conninfo_admin, autocommit=True) as c:
        for n in names:
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(_ident(n)))


# ---------------------------------------------------------------------------------------------
# The application database
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """How a database is created: encoding and locale options of CREATE DATABASE."""

    name: str
    encoding: str | None = None
    locale_provider: str | None = None
    icu_locale: str | None = None
    lc_collate: str | None = None
    lc_ctype: str | None = None

    def options(self) -> dict[str, str | None]:
        return {"encoding": self.encoding, "locale_provider": self.locale_provider, "icu_locale": self.icu_locale,
                "lc_collate": self.lc_collate, "lc_ctype": self.lc_ctype}


VARIANTS = [
    Variant("default"),
    Variant("icu", encoding="UTF8", locale_provider="icu", icu_locale="sv-SE"),
    Variant("latin1", encoding="LATIN1", lc_collate="C", lc_ctype="C"),
    Variant("sqlascii", encoding="SQL_ASCII", lc_collate="C", lc_ctype="C"),
]


def icu_locale_available(conninfo_admin: str, locale: str) -> bool:
    """Whether the server's ICU knows `locale` (e.g. 'sv-SE')."""
    with psycopg.connect(conninfo_admin) as c:
        return bool(c.execute("SELECT 1 FROM pg_collation WHERE collprovider = 'i' AND colliculocale = %s",
                              (locale,)).fetchone())


# Words whose order depends on the collation (Swedish: z < å < ä < ö), per encoding.
_WORDS = {
    "UTF8": ["zebra", "ångström", "äpple", "öl", "apa", "Éclair", "straße", "naïve", "ÆØÅ", "€uro", "日本"],
    "LATIN1": ["zebra", "ångström", "äpple", "öl", "apa", "Éclair", "straße", "naïve", "ÆØÅ"],
    "SQL_ASCII": ["zebra", "angstrom", "apple", "ol", "apa", "Eclair", "strasse", "naive", "AOA"],
}


def _schema_sql(r: AppRoles, enc: str) -> str:
    """Everything inside the database, run as the superuser (SET ROLE where ownership matters)."""
    words = _WORDS.get(enc, _WORDS["LATIN1"])
    if enc == "SQL_ASCII":
        # SQL_ASCII stores bytes unchecked: a Latin-1 é (0xE9) and a UTF-8 ß (0xC3 0x9F) side by side.
        accent_a, accent_b = r"E'caf\xe9'", r"E'stra\xc3\x9fe'"
    else:
        accent_a, accent_b = "'café'", "'straße'"
    words_values = ", ".join(f"({i}, {_lit(w)})" for i, w in enumerate(words, 1))
    q = {k: f'"{v}"' for k, v in
         {"owner": r.owner, "rw": r.rw, "ro": r.ro, "app": r.app, "nobody": r.nobody}.items()}
    return f"""
CREATE EXTENSION citext;
CREATE EXTENSION pg_trgm;
CREATE SCHEMA app AUTHORIZATION {q['owner']};
COMMENT ON SCHEMA app IS 'the application''s objects';
CREATE EXTENSION {EXTENSION} SCHEMA public;
INSERT INTO public.cfg_table (key, value) VALUES ('tenant', {accent_a}), ('feature_x', 'on');
GRANT USAGE ON SCHEMA app TO {q['ro']}, {q['rw']};

SET ROLE {q['owner']};
ALTER DEFAULT PRIVILEGES FOR ROLE {q['owner']} IN SCHEMA app GRANT SELECT ON TABLES TO {q['ro']};
ALTER DEFAULT PRIVILEGES FOR ROLE {q['owner']} IN SCHEMA app
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {q['rw']};
ALTER DEFAULT PRIVILEGES FOR ROLE {q['owner']} IN SCHEMA app GRANT USAGE, SELECT ON SEQUENCES TO {q['rw']};
ALTER DEFAULT PRIVILEGES FOR ROLE {q['owner']} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

CREATE TABLE app.customers (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    email citext UNIQUE,
    secret_note text
);
CREATE TABLE app.items (
    id bigserial PRIMARY KEY,
    customer_id integer REFERENCES app.customers (id),
    name text NOT NULL,
    price numeric(10, 2),
    tags text[],
    payload jsonb,
    created date,
    version integer NOT NULL DEFAULT 1
);
CREATE INDEX items_name_trgm ON app.items USING gin (name gin_trgm_ops);
CREATE TABLE app.archive (id integer PRIMARY KEY, note text);
CREATE TABLE app.docs (id integer PRIMARY KEY, owner_name name NOT NULL, visibility text NOT NULL, body text);
CREATE TABLE app.words (id integer PRIMARY KEY, word text NOT NULL);
CREATE TABLE app.vehicles (id integer PRIMARY KEY, wheels integer, label text);
CREATE TABLE app.cars (doors integer) INHERITS (app.vehicles);
CREATE TABLE app.events (id integer NOT NULL, at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE UNLOGGED TABLE app.session_cache (token text PRIMARY KEY, seen timestamptz);
CREATE SEQUENCE app.invoice_no START 1000;
CREATE VIEW app.active_items AS SELECT id, name, price FROM app.items WHERE price IS NOT NULL;
CREATE RULE archive_keep AS ON DELETE TO app.archive DO INSTEAD NOTHING;

CREATE FUNCTION app.bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;
CREATE TRIGGER items_version BEFORE UPDATE ON app.items FOR EACH ROW EXECUTE FUNCTION app.bump_version();
CREATE FUNCTION app.whoami_definer() RETURNS text LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS $$ SELECT current_user::text $$;
REVOKE EXECUTE ON FUNCTION app.whoami_definer() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.whoami_definer() TO {q['rw']};

ALTER TABLE app.docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY docs_visible ON app.docs FOR SELECT
    USING (visibility = 'public' OR owner_name = current_user);
-- A policy naming the unprivileged role: the database references it, yet grants it nothing.
CREATE POLICY docs_nobody ON app.docs FOR SELECT TO {q['nobody']} USING (false);

REVOKE ALL ON app.customers FROM {q['ro']};
GRANT SELECT (id, name, email) ON app.customers TO {q['ro']};
GRANT UPDATE (name) ON app.customers TO {q['app']};
COMMENT ON TABLE app.items IS 'what we sell';
COMMENT ON COLUMN app.items.tags IS 'free tags';

INSERT INTO app.customers (name, email, secret_note)
    SELECT 'customer ' || i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'C' || i || '@Example.com' END,
           CASE WHEN i % 3 = 0 THEN NULL ELSE 'note ' || i END
    FROM generate_series(1, 120) i;
UPDATE app.customers SET name = {accent_a} WHERE id = 1;
UPDATE app.customers SET name = {accent_b} WHERE id = 2;
INSERT INTO app.items (customer_id, name, price, tags, payload, created)
    SELECT 1 + i % 120, 'item ' || i, CASE WHEN i % 10 = 0 THEN NULL ELSE (i * 1.25)::numeric(10, 2) END,
           ARRAY['t' || i % 5, 'x'], jsonb_build_object('n', i, 'odd', i % 2 = 1),
           DATE '2025-01-01' + i
    FROM generate_series(1, 400) i;
UPDATE app.items SET name = name || ' ' || {accent_b} WHERE id % 50 = 0;
UPDATE app.items SET payload = NULL, tags = NULL WHERE id % 33 = 0;
INSERT INTO app.archive SELECT i, 'archived ' || i FROM generate_series(1, 30) i;
INSERT INTO app.docs VALUES
    (1, '{r.ro}', 'private', 'ro''s own'), (2, '{r.app}', 'private', 'app''s own'),
    (3, '{r.owner}', 'public', 'everyone'), (4, '{r.owner}', 'private', 'owner only'),
    (5, '{r.app}', 'public', NULL);
INSERT INTO app.words VALUES {words_values};
INSERT INTO app.vehicles SELECT i, 2, 'bike ' || i FROM generate_series(1, 20) i;
INSERT INTO app.cars SELECT i, 4, 'car ' || i, 2 + i % 3 FROM generate_series(101, 140) i;
INSERT INTO app.events SELECT i, DATE '2025-06-01' + (i * 2), 'event ' || i FROM generate_series(1, 200) i;
INSERT INTO app.session_cache SELECT 'tok' || i, TIMESTAMPTZ '2026-01-01 00:00+00' + i * INTERVAL '1 minute'
    FROM generate_series(1, 25) i;
SELECT setval('app.invoice_no', 1042);
CREATE MATERIALIZED VIEW app.item_stats AS
    SELECT customer_id, count(*) AS n, sum(price) AS total FROM app.items GROUP BY customer_id;
CREATE UNIQUE INDEX item_stats_customer ON app.item_stats (customer_id);
CREATE PUBLICATION app_pub FOR TABLE app.items, app.customers;
RESET ROLE;

SELECT lo_from_bytea({LO_OID}, '\\x00010203fffe'::bytea || convert_to('large object', 'SQL_ASCII'));
ALTER LARGE OBJECT {LO_OID} OWNER TO {q['owner']};
COMMENT ON LARGE OBJECT {LO_OID} IS 'a blob the application owns';
GRANT SELECT ON LARGE OBJECT {LO_OID} TO {q['ro']};
"""


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def build_app_database(conninfo_admin: str, dbname: str, roles: AppRoles, *, encoding: str | None = None,
                       locale_provider: str | None = None, icu_locale: str | None = None,
                       lc_collate: str | None = None, lc_ctype: str | None = None) -> str:
    """Create `dbname` (from template0, owned by the owner role) full of application objects.

    Returns the conninfo of the new database (same server and superuser as `conninfo_admin`).
    """
    opts = [sql.SQL("TEMPLATE template0"), sql.SQL("OWNER {}").format(_ident(roles.owner))]
    for key, value in (("ENCODING", encoding), ("LOCALE_PROVIDER", locale_provider),
                       ("ICU_LOCALE", icu_locale), ("LC_COLLATE", lc_collate), ("LC_CTYPE", lc_ctype)):
        if value is not None:
            opts.append(sql.SQL(key + " {}").format(sql.Literal(value)))
    opts.append(sql.SQL("CONNECTION LIMIT 50"))
    db = _ident(dbname)
    with psycopg.connect(conninfo_admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} ").format(db) + sql.SQL(" ").join(opts))
        c.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal("pgkeeper fidelity test: app db")))
        c.execute(sql.SQL("ALTER DATABASE {} SET search_path = app, public").format(db))
        c.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '8MB'").format(db))
        c.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout = '30s'").format(
            _ident(roles.app), db))
        c.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
        c.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}, {}").format(
            db, _ident(roles.ro), _ident(roles.rw), _ident(roles.app)))
        c.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(db, _ident(roles.app)))
    dbinfo = make_conninfo(conninfo_admin, dbname=dbname)
    with psycopg.connect(dbinfo, autocommit=True) as c:
        enc = c.execute("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
                        ).fetchone()[0]
        c.execute(_schema_sql(roles, _text(enc)))
    return dbinfo


# ---------------------------------------------------------------------------------------------
# Comparison helpers
# ---------------------------------------------------------------------------------------------

def tool_env(conninfo: str, dbname: str) -> dict[str, str]:
    """libpq variables for a client tool: the password goes through the environment, never argv."""
    params = conninfo_to_dict(conninfo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    mapping = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    for key, var in mapping.items():
        if params.get(key):
            env[var] = str(params[key])
    env["PGDATABASE"] = dbname
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


_RESTRICT = re.compile(r"^\\(un)?restrict \S+$")


_PRIVILEGE_LINE = re.compile(r"^(GRANT|REVOKE|ALTER DEFAULT PRIVILEGES) ")


def _sort_privilege_runs(lines: list[str]) -> list[str]:
    """Sort each run of consecutive GRANT/REVOKE/ALTER DEFAULT PRIVILEGES lines.

    pg_dump writes one line per aclitem, in the order of the ACL array, and that order follows
    role OIDs: the same privileges restored on a server whose roles were created in another
    order come out in another order (seen with ALTER DEFAULT PRIVILEGES ... TO ro / TO rw).
    """
    out: list[str] = []
    run: list[str] = []
    for ln in [*lines, ""]:
        if _PRIVILEGE_LINE.match(ln):
            run.append(ln)
            continue
        out.extend(sorted(run))
        run = []
        out.append(ln)
    return out[:-1]


def normalize_dump(text: str, dbname: str) -> str:
    """Only what legitimately differs between two dumps of equal databases.

    - `\\restrict KEY` / `\\unrestrict KEY` (pg_dump >= 15.14 writes a random key each run);
    - the database's own name (CREATE/ALTER/COMMENT/GRANT ... DATABASE, `\\connect`, `-- Name:` lines);
    - the order of the privilege lines of one object (see `_sort_privilege_runs`).
    """
    lines = [ln for ln in text.splitlines() if not _RESTRICT.match(ln)]
    pattern = re.compile(r'(?<![\w$])("?)' + re.escape(dbname) + r'\1(?![\w$])')
    lines = [pattern.sub("<DBNAME>", ln) for ln in lines]
    return "\n".join(_sort_privilege_runs(lines)) + "\n"


def _pg_dump(conninfo: str, dbname: str, *args: str) -> str:
    done = subprocess.run([str(PG_BINDIR / "pg_dump"), "--no-sync", *args], env=tool_env(conninfo, dbname),
                          capture_output=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"pg_dump {' '.join(args)} of {dbname} failed: "
                             f"{done.stderr.decode('utf-8', 'replace').strip()}")
    # In the database's encoding (LATIN1, or raw bytes for SQL_ASCII): keep every byte distinct.
    return done.stdout.decode("utf-8", "surrogateescape")


def dump_schema(conninfo: str, dbname: str) -> str:
    """`pg_dump --schema-only --create` of `dbname`, normalized (see `normalize_dump`).

    `--create` includes the database's own properties: encoding, locale, owner, comment, ACL,
    `ALTER DATABASE ... SET` and `ALTER ROLE ... IN DATABASE ... SET`.
    """
    return normalize_dump(_pg_dump(conninfo, dbname, "--schema-only", "--create"), dbname)


def dump_data(conninfo: str, dbname: str) -> str:
    """`pg_dump --data-only` of `dbname` (table rows, sequence values, large objects), normalized."""
    return normalize_dump(_pg_dump(conninfo, dbname, "--data-only"), dbname)


def short_diff(a: str, b: str, *, a_name: str = "original", b_name: str = "restored", limit: int = 60) -> str:
    """A unified diff of two texts, at most `limit` lines: for assertion messages."""
    if a == b:
        return ""
    diff = list(difflib.unified_diff(a.splitlines(), b.splitlines(), a_name, b_name, n=1, lineterm=""))
    more = f"\n... {len(diff) - limit} more diff lines" if len(diff) > limit else ""
    return "\n".join(diff[:limit]) + more


def db_properties(conninfo_admin: str, dbname: str) -> dict[str, Any]:
    """The database's own properties, by name (not oid), comparable across databases and servers."""
    with psycopg.connect(conninfo_admin) as c:
        row = c.execute("""
            SELECT r.rolname, pg_encoding_to_char(d.encoding), d.datlocprovider::text, d.datcollate,
                   d.datctype, d.daticulocale, d.datconnlimit, t.spcname,
                   shobj_description(d.oid, 'pg_database'), d.datallowconn, d.datistemplate, d.oid
            FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba
                 JOIN pg_tablespace t ON t.oid = d.dattablespace
            WHERE d.datname = %s""", (dbname,)).fetchone()
        if row is None:
            raise AssertionError(f"database {dbname} does not exist")
        (owner, encoding, provider, collate, ctype, icu, connlimit, spc, comment, allowconn, istemplate,
         oid) = row
        acl = c.execute("""
            SELECT coalesce(g.rolname, 'PUBLIC'), gr.rolname, a.privilege_type, a.is_grantable
            FROM pg_database d,
                 aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                 LEFT JOIN pg_roles g ON g.oid = a.grantee
                 LEFT JOIN pg_roles gr ON gr.oid = a.grantor
            WHERE d.oid = %s ORDER BY 1, 2, 3""", (oid,)).fetchall()
        settings = c.execute("""
            SELECT coalesce(r.rolname, '*'), s.setconfig
            FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
            WHERE s.setdatabase = %s""", (oid,)).fetchall()
    return {
        "owner": owner, "encoding": encoding, "locale_provider": provider, "collate": collate, "ctype": ctype,
        "icu_locale": icu, "connection_limit": connlimit, "tablespace": spc, "comment": comment,
        "allow_connections": allowconn, "is_template": istemplate,
        "acl": [tuple(a) for a in acl],
        "settings": {role: sorted(cfg or []) for role, cfg in sorted(settings)},
    }


def _text(value: Any) -> Any:
    """psycopg returns text as bytes from a SQL_ASCII database: make outcomes comparable."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    return value


def role_conninfo(conninfo_admin: str, dbname: str, role: str, password: str) -> str:
    """The conninfo of `role` on the server of `conninfo_admin`."""
    return make_conninfo(conninfo_admin, dbname=dbname, user=role, password=password, connect_timeout=10)


# What an application role tries, in its own transaction each (rolled back): action -> SQL.
PROBES: dict[str, str] = {
    "whoami": "SELECT current_user",
    "search_path": "SHOW search_path",
    "work_mem": "SHOW work_mem",
    "statement_timeout": "SHOW statement_timeout",
    "lock_timeout": "SHOW lock_timeout",
    "unqualified_select": "SELECT count(*) FROM items",
    "select_items": "SELECT count(*), sum(price), max(name) FROM app.items",
    "select_customer_names": "SELECT count(*), string_agg(name, ',' ORDER BY id) FROM app.customers",
    "select_customer_secrets": "SELECT count(secret_note) FROM app.customers",
    "select_docs_rls": "SELECT string_agg(id::text, ',' ORDER BY id) FROM app.docs",
    "select_view": "SELECT count(*) FROM app.active_items",
    "select_matview": "SELECT count(*), sum(n) FROM app.item_stats",
    "select_parent_only": "SELECT count(*) FROM ONLY app.vehicles",
    "select_parent_all": "SELECT count(*) FROM app.vehicles",
    "select_partitioned": "SELECT count(*) FROM app.events",
    "select_unlogged": "SELECT count(*) FROM app.session_cache",
    "sorted_words": "SELECT string_agg(word, ' ' ORDER BY word) FROM app.words",
    "sequence_read": "SELECT last_value, is_called FROM app.invoice_no",
    "cfg_get": "SELECT public.cfg_get('tenant'), public.cfg_get('mode')",
    "read_large_object": f"SELECT encode(lo_get({LO_OID}), 'hex')",
    "security_definer": "SELECT app.whoami_definer()",
    # No nextval() anywhere: sequences are not transactional, a probe would change the data.
    "insert_archive": "INSERT INTO app.archive (id, note) VALUES (999, 'probe')",
    "update_customer_name": "UPDATE app.customers SET name = 'probe' WHERE id = 3",
    "update_customer_secret": "UPDATE app.customers SET secret_note = 'probe' WHERE id = 3",
    "trigger_bumps_version": "UPDATE app.items SET price = 1 WHERE id = 5 RETURNING version",
    "delete_archive_rule": "DELETE FROM app.archive WHERE id = 1",
    "create_temp_table": "CREATE TEMP TABLE probe_tmp (x int)",
    "create_in_app_schema": "CREATE TABLE app.probe_new (x int)",
    "create_in_public": "CREATE TABLE public.probe_new (x int)",
}


def privilege_probe(conninfo_role: str) -> dict[str, str]:
    """What the role of `conninfo_role` can do in its database: action -> outcome.

    An outcome is `ok: <result>` or `refused: <SQLSTATE>`; `connect` is `ok` or `refused`
    (when the role cannot connect, nothing else is tried). Nothing the probe does is kept.
    """
    out: dict[str, str] = {}
    try:
        conn = psycopg.connect(conninfo_role)
    except psycopg.OperationalError as exc:
        msg = str(exc)
        reason = "no CONNECT privilege" if "permission denied" in msg else msg.strip().splitlines()[-1]
        return {"connect": f"refused: {reason}"}
    out["connect"] = "ok"
    with conn:
        for action, query in PROBES.items():
            try:
                with conn.cursor() as cur:
                    cur.execute(query)
                    rows = cur.fetchall() if cur.description else []
                    out[action] = f"ok: {_text([list(r) for r in rows])!r} ({cur.rowcount} rows)"
            except psycopg.Error as exc:
                out[action] = f"refused: {exc.sqlstate}"
            finally:
                conn.rollback()
    return out


def probe_roles(conninfo_admin: str, dbname: str, roles: AppRoles) -> dict[str, dict[str, str]]:
    """`privilege_probe` for each login role of the application, keyed by role name."""
    return {role: privilege_probe(role_conninfo(conninfo_admin, dbname, role, roles.password))
            for role in roles.logins}


def snapshot(conninfo_admin: str, dbname: str, roles: AppRoles) -> dict[str, Any]:
    """Everything the fidelity tests compare: schema and data dumps, properties, probes."""
    return {"schema": dump_schema(conninfo_admin, dbname), "data": dump_data(conninfo_admin, dbname),
            "properties": db_properties(conninfo_admin, dbname), "probe": probe_roles(conninfo_admin, dbname, roles)}


def differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """What differs between two snapshots, as readable lines (empty when equal)."""
    found = []
    for key in ("schema", "data"):
        if key in expected and expected[key] != actual.get(key):
            found.append(f"pg_dump {key} differs:\n" + short_diff(expected[key], actual.get(key, "")))
    if "properties" in expected:
        for k, v in expected["properties"].items():
            if actual["properties"].get(k) != v:
                found.append(f"database property {k}: {v!r} became {actual['properties'].get(k)!r}")
    if "probe" in expected:
        for role, outcomes in expected["probe"].items():
            got = actual["probe"].get(role, {})
            for action in sorted(set(outcomes) | set(got)):
                if outcomes.get(action) != got.get(action):
                    found.append(f"{role} {action}: {outcomes.get(action)} became {got.get(action)}")
    return found

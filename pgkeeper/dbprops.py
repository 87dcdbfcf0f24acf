"""A database's own properties: read them, create a database with them, compare them.

pg_dump without --create carries none of what CREATE DATABASE and ALTER DATABASE set (owner,
encoding, locale provider, connection limit, ACL, per-database settings). pgkeeper records them
in the manifest at backup time and gives them back on restore, in two steps: the shape of the
database before pg_restore (encoding, locales, owner, tablespace), everything that could get in
pg_restore's way after it (settings such as default_transaction_read_only, the connection limit,
a REVOKE CONNECT).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pgkeeper.errors import BadName
from pgkeeper.fmt import first_line
from pgkeeper.manifest import DatabaseGrant, DatabaseProperties

# Settings whose value is a list of names that ALTER ... SET must receive element by element
# (pg_dump's variable_is_guc_list_quote): re-applied as one literal, `search_path = a, b` would
# become a single schema called "a, b".
LIST_SETTINGS = frozenset({"local_preload_libraries", "search_path", "session_preload_libraries",
                           "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"})

_PROPERTIES = """
SELECT r.rolname, pg_encoding_to_char(d.encoding), d.datlocprovider, d.datcollate, d.datctype,
       d.daticulocale, d.datconnlimit, t.spcname, shobj_description(d.oid, 'pg_database'), d.datacl IS NULL
FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba JOIN pg_tablespace t ON t.oid = d.dattablespace
WHERE d.datname = %s
"""
_ACL = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable
FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s AND a.grantee <> d.datdba ORDER BY 1, 2
"""
_SETTINGS = """
SELECT coalesce(r.rolname, ''), s.setconfig FROM pg_db_role_setting s
JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole
WHERE d.datname = %s ORDER BY 1
"""


def read_properties(c: psycopg.Connection, name: str) -> DatabaseProperties | None:
    """The properties of database `name` as the catalog holds them (None: no such database)."""
    row = c.execute(_PROPERTIES, (name,)).fetchone()
    if row is None:
        return None
    owner, encoding, provider, collate, ctype, icu, connlimit, tablespace, comment, default_acl = row
    acl = None if default_acl else [DatabaseGrant(grantee=g, privilege=p, grantable=bool(o))
                                    for g, p, o in c.execute(_ACL, (name,)).fetchall()]
    settings: list[str] = []
    role_settings: dict[str, list[str]] = {}
    for role, config in c.execute(_SETTINGS, (name,)).fetchall():
        if role:
            role_settings[role] = list(config or [])
        else:
            settings = list(config or [])
    return DatabaseProperties(
        owner=owner, encoding=encoding, locale_provider="icu" if provider == "i" else "libc", collate=collate,
        ctype=ctype, icu_locale=icu, connection_limit=connlimit, tablespace=tablespace, comment=comment,
        acl=acl, settings=settings, role_settings=role_settings)


def unreproducible(c: psycopg.Connection, props: DatabaseProperties) -> str | None:
    """Why this server cannot create a database with these properties, or None when it can."""
    if c.execute("SELECT 1 FROM pg_tablespace WHERE spcname = %s", (props.tablespace,)).fetchone() is None:
        return f"tablespace {props.tablespace!r} does not exist on this server"
    if props.locale_provider == "icu":
        has_icu = c.execute("SELECT count(*) FROM pg_collation WHERE collprovider = 'i'").fetchone()
        if not has_icu or not has_icu[0]:
            return f"this server has no ICU support for locale {props.icu_locale!r}"
        known = c.execute("SELECT 1 FROM pg_collation WHERE collprovider = 'i' AND colliculocale = %s",
                          (props.icu_locale,)).fetchone()
        if known is None and props.icu_locale not in ("und", "root", ""):
            return f"ICU locale {props.icu_locale!r} is not known to this server"
    return None


def create_database(c: psycopg.Connection, name: str, props: DatabaseProperties | None, owner: str | None) -> None:
    """CREATE DATABASE `name` from template0 with the recorded encoding, locales and tablespace.

    `owner` is the role that will own it (the recorded one when it exists here); the settings,
    ACL and connection limit come later, from apply_after_restore().
    """
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))]
    if props is not None:
        parts.append(sql.SQL("ENCODING {}").format(sql.Literal(props.encoding)))
        if props.locale_provider == "icu":
            parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(props.icu_locale or "")))
        parts.append(sql.SQL("LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(props.collate),
                                                                 sql.Literal(props.ctype)))
        if props.tablespace != "pg_default":
            parts.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(props.tablespace)))
    if owner:
        parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
    try:
        c.execute(sql.SQL(" ").join(parts))
    except psycopg.errors.DataError as exc:  # an unknown locale, an encoding the locale cannot hold
        raise BadName(f"cannot create database {name!r} as the backup's was: "
                      f"{first_line(exc, type(exc).__name__)}") from None
    except psycopg.errors.InvalidParameterValue as exc:
        raise BadName(f"cannot create database {name!r} as the backup's was: "
                      f"{first_line(exc, type(exc).__name__)}") from None


def split_list_setting(value: str) -> list[str]:
    """`"$user", public` -> ['$user', 'public'] (PostgreSQL's SplitGUCList: commas outside double
    quotes separate, double quotes are removed and "" inside them is one quote)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"' and i + 1 < len(value) and value[i + 1] == '"':
                current.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    tail = "".join(current).strip()
    if tail or items:
        items.append(tail)
    return items


def set_clause(item: str) -> sql.Composed:
    """`SET key TO value` for one stored `key=value`, list-valued settings element by element."""
    key, _, value = item.partition("=")
    if key.lower() in LIST_SETTINGS:
        values = sql.SQL(", ").join(sql.Literal(v) for v in split_list_setting(value))
    else:
        values = sql.Literal(value)
    return sql.SQL("SET {} TO {}").format(sql.Identifier(key), values)


def apply_after_restore(c: psycopg.Connection, name: str, props: DatabaseProperties,
                        skip_roles: frozenset[str] = frozenset()) -> list[str]:
    """Settings, role settings, ACL and connection limit; returns what could not be applied
    (a role that does not exist here, named in `skip_roles` or missing)."""
    db = sql.Identifier(name)
    skipped: list[str] = []
    existing = {r for (r,) in c.execute("SELECT rolname FROM pg_roles").fetchall()}
    for item in props.settings:
        c.execute(sql.SQL("ALTER DATABASE {} ").format(db) + set_clause(item))
    for role, items in props.role_settings.items():
        if role not in existing or role in skip_roles:
            skipped.append(f"settings of role {role}")
            continue
        for item in items:
            c.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} ").format(sql.Identifier(role), db) + set_clause(item))
    if props.acl is not None:
        c.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        for grant in props.acl:
            if grant.grantee is not None and (grant.grantee not in existing or grant.grantee in skip_roles):
                skipped.append(f"{grant.privilege} for role {grant.grantee}")
                continue
            c.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(grant.privilege), db,
                sql.Identifier(grant.grantee) if grant.grantee else sql.SQL("PUBLIC"),
                sql.SQL(" WITH GRANT OPTION" if grant.grantable else "")))
    if props.connection_limit != -1:
        c.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(props.connection_limit)))
    return skipped


def differences(expected: DatabaseProperties, actual: DatabaseProperties | None,
                ignore: frozenset[str] = frozenset({"comment"})) -> list[str]:
    """One line per property that differs (the comment is a marker while a copy is in the making)."""
    if actual is None:
        return ["the database does not exist"]
    out = []
    mine, theirs = expected.model_dump(), actual.model_dump()
    for key, want in mine.items():
        if key in ignore:
            continue
        got = theirs.get(key)
        if key == "acl" and want is not None and got is not None:
            want, got = sorted(map(str, want)), sorted(map(str, got))
        if want != got:
            out.append(f"database {key.replace('_', ' ')}: expected {want!r}, found {got!r}")
    return out

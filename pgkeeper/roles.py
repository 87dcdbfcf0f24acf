"""The roles a database needs: which they are, their definitions, and creating the missing ones.

Roles live outside any one database, so pg_dump leaves them out; a restore onto a new server
then fails on the first `ALTER ... OWNER TO`, or (restored without owners) silently drops every
GRANT. Each logical backup stores the definitions of the roles its database uses (the roles its
objects, grants and settings name, and those connected to them by membership), so a restore can
say which are missing before touching anything and create exactly those, never altering a role
that exists. Password hashes are secrets: they go into the backup's roles file only, never into a
log line, the manifest or an error message.
"""

from __future__ import annotations

import json

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field, SecretStr

# Roles an object, grant or setting of the current database names (pg_shdepend records owners,
# ACL grantees and policy roles; the bootstrap superuser is pinned, so it is added by name).
_REFERENCED = """
SELECT DISTINCT r.rolname FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid
WHERE s.refclassid = 'pg_authid'::regclass
  AND (s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       OR (s.dbid = 0 AND s.classid = 'pg_database'::regclass
           AND s.objid = (SELECT oid FROM pg_database WHERE datname = current_database())))
UNION SELECT r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = current_database()
UNION SELECT r.rolname FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
  WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
UNION SELECT rolname FROM pg_roles WHERE oid = 10
"""
_MEMBERSHIP = """
SELECT g.rolname, m.rolname, a.admin_option FROM pg_auth_members a
JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
WHERE g.rolname NOT LIKE 'pg\\_%' AND m.rolname NOT LIKE 'pg\\_%'
"""
_ATTRIBUTES = """
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
       rolbypassrls, rolconnlimit, rolvaliduntil::text, {password}
FROM {catalog} WHERE rolname = ANY(%s) ORDER BY 1
"""
_ROLE_SETTINGS = """
SELECT r.rolname, s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
WHERE s.setdatabase = 0 AND r.rolname = ANY(%s)
"""


class RoleDefinition(BaseModel):
    name: str
    superuser: bool = False
    inherit: bool = True
    createrole: bool = False
    createdb: bool = False
    login: bool = False
    replication: bool = False
    bypassrls: bool = False
    connection_limit: int = -1
    valid_until: str | None = None
    password: SecretStr | None = Field(default=None, description="the stored hash (only a superuser can read it)")
    settings: list[str] = Field(default_factory=list, description="ALTER ROLE ... SET, as stored")


class Membership(BaseModel):
    role: str
    member: str
    admin_option: bool = False


class ClusterGlobals(BaseModel):
    """The roles file of a logical backup."""

    roles: list[RoleDefinition]
    memberships: list[Membership] = Field(default_factory=list)
    passwords_included: bool = False

    def to_bytes(self) -> bytes:
        data = self.model_dump(mode="json")
        for role, original in zip(data["roles"], self.roles, strict=True):
            role["password"] = original.password.get_secret_value() if original.password else None
        return json.dumps(data, indent=1).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> ClusterGlobals:
        return cls.model_validate_json(data)


def referenced_roles(c: psycopg.Connection) -> list[str]:
    """Roles the connected database names: owners, grantees, policy roles, role settings."""
    return sorted(r for (r,) in c.execute(_REFERENCED).fetchall() if not r.startswith("pg_"))


def with_members(c: psycopg.Connection, names: list[str]) -> tuple[list[str], list[Membership]]:
    """`names` plus every role connected to them by membership, either way; and those memberships.

    A login role that only inherits its rights through a group is named by no object, yet the
    application cannot log in without it."""
    edges = [Membership(role=g, member=m, admin_option=bool(a)) for g, m, a in c.execute(_MEMBERSHIP).fetchall()]
    found = set(names)
    grew = True
    while grew:
        grew = False
        for e in edges:
            if (e.role in found) != (e.member in found):
                found |= {e.role, e.member}
                grew = True
    return sorted(found), [e for e in edges if e.role in found and e.member in found]


def read_globals(c: psycopg.Connection, names: list[str]) -> ClusterGlobals:
    """Definitions of the roles `names` and their memberships; password hashes when readable."""
    names, memberships = with_members(c, names)
    superuser = bool(c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0])  # type: ignore[index]
    query = _ATTRIBUTES.format(password="rolpassword" if superuser else "NULL",
                               catalog="pg_authid" if superuser else "pg_roles")
    settings = {r: list(cfg or []) for r, cfg in c.execute(_ROLE_SETTINGS, (names,)).fetchall()}
    roles = []
    for row in c.execute(query, (names,)).fetchall():  # type: ignore[arg-type]
        name, su, inherit, createrole, createdb, login, repl, bypass, connlimit, until, password = row
        roles.append(RoleDefinition(
            name=name, superuser=su, inherit=inherit, createrole=createrole, createdb=createdb, login=login,
            replication=repl, bypassrls=bypass, connection_limit=connlimit, valid_until=until,
            password=SecretStr(password) if password else None, settings=settings.get(name, [])))
    return ClusterGlobals(roles=roles, memberships=memberships, passwords_included=superuser)


def existing_roles(c: psycopg.Connection) -> set[str]:
    return {r for (r,) in c.execute("SELECT rolname FROM pg_roles").fetchall()}


def missing_roles(c: psycopg.Connection, needed: list[str]) -> list[str]:
    have = existing_roles(c)
    return sorted(r for r in needed if r not in have)


def create_missing(c: psycopg.Connection, defs: ClusterGlobals, wanted: list[str]) -> list[str]:
    """Create the roles of `wanted` that do not exist here, with their attributes, settings and
    the memberships among created roles or from a created role into an existing group. Roles that
    exist are never altered. Returns the names created (in one transaction: all or none)."""
    from pgkeeper.dbprops import set_clause

    have = existing_roles(c)
    by_name = {r.name: r for r in defs.roles}
    to_create = [by_name[n] for n in wanted if n not in have and n in by_name]
    unknown = sorted(n for n in wanted if n not in have and n not in by_name)
    if unknown:
        from pgkeeper.errors import NotFound

        raise NotFound(f"the backup's roles file does not define {', '.join(unknown)}: create them by hand")
    created = {r.name for r in to_create}
    with c.transaction():
        for r in to_create:
            options = [sql.SQL(word) for word in (
                "SUPERUSER" if r.superuser else "NOSUPERUSER", "INHERIT" if r.inherit else "NOINHERIT",
                "CREATEROLE" if r.createrole else "NOCREATEROLE", "CREATEDB" if r.createdb else "NOCREATEDB",
                "LOGIN" if r.login else "NOLOGIN", "REPLICATION" if r.replication else "NOREPLICATION",
                "BYPASSRLS" if r.bypassrls else "NOBYPASSRLS")]
            options.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(r.connection_limit)))
            if r.password is not None:
                options.append(sql.SQL("PASSWORD {}").format(sql.Literal(r.password.get_secret_value())))
            if r.valid_until:
                options.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(r.valid_until)))
            c.execute(sql.SQL("CREATE ROLE {} WITH ").format(sql.Identifier(r.name)) + sql.SQL(" ").join(options))
            for item in r.settings:
                c.execute(sql.SQL("ALTER ROLE {} ").format(sql.Identifier(r.name)) + set_clause(item))
        for m in defs.memberships:
            # Only memberships that make a new role what it was; an existing role gains nothing.
            if m.member in created and (m.role in created or m.role in have):
                c.execute(sql.SQL("GRANT {} TO {}{}").format(
                    sql.Identifier(m.role), sql.Identifier(m.member),
                    sql.SQL(" WITH ADMIN OPTION" if m.admin_option else "")))
    return sorted(created)

"""Database-level operations pgkeeper needs: create, drop, rename, terminate, count.

Names are always quoted with psycopg.sql.Identifier; nothing is formatted into SQL by hand.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pgkeeper import dbprops
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.manifest import DatabaseProperties
from pgkeeper.names import check_identifier
from pgkeeper.tasks.snapshot import object_counts, table_row_counts

MAINTENANCE_DB = "postgres"


def admin_connection(conn: PostgresConnection) -> psycopg.Connection:
    """An autocommit connection to the maintenance database (CREATE/DROP DATABASE need it)."""
    db = MAINTENANCE_DB if conn.database != MAINTENANCE_DB else "template1"
    return conn.connect(database=db, autocommit=True)


def database_exists(conn: PostgresConnection, name: str) -> bool:
    with admin_connection(conn) as c:
        return c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def create_database(conn: PostgresConnection, name: str, props: DatabaseProperties | None = None,
                    owner: str | None = None, comment: str | None = None) -> None:
    """An empty database from template0 (so nothing from template1 collides with the dump),
    shaped by `props` (encoding, locales) when given."""
    check_identifier("database", name)
    with admin_connection(conn) as c:
        dbprops.create_database(c, name, props, owner)
        if comment:
            c.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)))


def drop_database(conn: PostgresConnection, name: str) -> None:
    check_identifier("database", name)
    with admin_connection(conn) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_size(conn: PostgresConnection, name: str) -> int | None:
    with admin_connection(conn) as c:
        row = c.execute("SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s",
                        (name,)).fetchone()
    return int(row[0]) if row else None


def databases_with_prefix(conn: PostgresConnection, prefix: str) -> list[str]:
    """Names of the databases whose name starts with `prefix` (taken literally, not as a pattern)."""
    with admin_connection(conn) as c:
        rows = c.execute("SELECT datname FROM pg_database WHERE left(datname, length(%s)) = %s ORDER BY 1",
                         (prefix, prefix)).fetchall()
    return [r[0] for r in rows]


def count_database(conn: PostgresConnection, name: str) -> tuple[dict[str, int], dict[str, int]]:
    """Row counts per table and object counts of database `name`, as the manifest records them."""
    with conn.connect(database=name) as c:
        c.execute("SET statement_timeout = 0")  # the restored database's setting is for its application
        c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return table_row_counts(c), object_counts(c)


def count_differences(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    """Human lines for every table whose count differs, is missing, or is unexpected."""
    diffs = []
    for table in sorted(set(expected) | set(actual)):
        e, a = expected.get(table), actual.get(table)
        if e != a:
            diffs.append(f"{table}: expected {'absent' if e is None else e}, found {'absent' if a is None else a}")
    return diffs


def database_differences(tables: dict[str, int], objects: dict[str, int], found_tables: dict[str, int],
                         found_objects: dict[str, int]) -> list[str]:
    """Lines for every row count (per table) and object count that differs from what a manifest
    recorded. Only the object kinds it recorded are compared: an older manifest counts fewer."""
    return count_differences(tables, found_tables) + count_differences(
        objects, {k: v for k, v in found_objects.items() if k in objects})

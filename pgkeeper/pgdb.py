"""Database-level operations pgkeeper needs: create, drop, rename, terminate, count.

Names are always quoted with psycopg.sql.Identifier; nothing is formatted into SQL by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from pgkeeper import dbprops
from pgkeeper.manifest import DatabaseProperties
from pgkeeper.names import check_identifier

if TYPE_CHECKING:
    from pgkeeper.blocks.postgres import PostgresConnection

MAINTENANCE_DB = "postgres"

# Tables whose data pg_dump writes, by pg_dump's own rule: ordinary tables outside system schemas
# that are not extension members, plus the configuration tables extensions registered with
# pg_extension_config_dump (whose rows pg_dump filters with the registered condition). Each is
# counted ONLY itself: an inheritance parent's count must not include its children's rows.
USER_TABLES = """
SELECT n.nspname, c.relname, coalesce(cfg.condition, '') AS condition
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
  SELECT e.extcondition[array_position(e.extconfig, c.oid)] AS condition
  FROM pg_extension e WHERE c.oid = ANY (e.extconfig) LIMIT 1) cfg ON true
LEFT JOIN LATERAL (
  SELECT true AS member FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
  AND d.objid = c.oid AND d.deptype = 'e' LIMIT 1) ext ON true
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND (ext.member IS NULL AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       OR cfg.condition IS NOT NULL)
ORDER BY 1, 2
"""

USER_NAMESPACES = """
n.nspname NOT IN ('pg_catalog', 'information_schema')
AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""

OBJECT_COUNTS = f"""
SELECT
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND {USER_NAMESPACES}) AS tables,
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'i' AND {USER_NAMESPACES}) AS indexes,
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'S' AND {USER_NAMESPACES}) AS sequences,
  (SELECT count(*) FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
    WHERE k.contype IN ('p', 'f', 'u', 'c', 'x') AND {USER_NAMESPACES}) AS constraints,
  (SELECT count(*) FROM pg_largeobject_metadata) AS large_objects
"""


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


def table_row_counts(holder: psycopg.Connection) -> dict[str, int]:
    """Exact row counts of every dumped table, as seen by the holder's snapshot."""
    counts: dict[str, int] = {}
    for schema, table, condition in holder.execute(USER_TABLES).fetchall():
        # The condition is the extension's own SQL from the catalog, as pg_dump applies it.
        query = sql.SQL("SELECT count(*) FROM ONLY {}.{} {}").format(
            sql.Identifier(schema), sql.Identifier(table), sql.SQL(condition))
        counts[f"{schema}.{table}"] = holder.execute(query).fetchone()[0]  # type: ignore[index]
    return counts


def object_counts(connection: psycopg.Connection) -> dict[str, int]:
    row = connection.execute(OBJECT_COUNTS).fetchone()
    assert row is not None
    return {"tables": row[0], "indexes": row[1], "sequences": row[2], "constraints": row[3],
            "large_objects": row[4]}

"""A snapshot shared with pg_dump, and the table statistics taken inside it.

The holding transaction exports its snapshot; pg_dump --snapshot dumps exactly that state,
and the row counts are taken in the same transaction, so the manifest's counts are exactly
what the dump holds, whatever other sessions commit meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from pgkeeper.blocks.postgres import PostgresConnection

# Tables whose data pg_dump writes: ordinary tables outside system schemas and extensions.
USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
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
    WHERE k.contype IN ('p', 'f', 'u', 'c', 'x') AND {USER_NAMESPACES}) AS constraints
"""


@contextmanager
def exported_snapshot(conn: PostgresConnection) -> Iterator[tuple[psycopg.Connection, str]]:
    """Open a repeatable-read transaction and export its snapshot for pg_dump."""
    holder = conn.connect()
    try:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = holder.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        yield holder, snapshot
    finally:
        holder.close()


def table_row_counts(holder: psycopg.Connection) -> dict[str, int]:
    """Exact row counts of every dumped table, as seen by the holder's snapshot."""
    counts: dict[str, int] = {}
    for schema, table in holder.execute(USER_TABLES).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        counts[f"{schema}.{table}"] = holder.execute(query).fetchone()[0]  # type: ignore[index]
    return counts


def object_counts(connection: psycopg.Connection) -> dict[str, int]:
    row = connection.execute(OBJECT_COUNTS).fetchone()
    assert row is not None
    return {"tables": row[0], "indexes": row[1], "sequences": row[2], "constraints": row[3]}

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


@contextmanager
def exported_snapshot(conn: PostgresConnection) -> Iterator[tuple[psycopg.Connection, str]]:
    """Open a repeatable-read transaction and export its snapshot for pg_dump."""
    holder = conn.connect()
    try:
        # The database's own timeouts are for its application, not for counting a large table.
        holder.execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = holder.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        if isinstance(snapshot, bytes):  # a SQL_ASCII database hands text back undecoded
            snapshot = snapshot.decode("ascii")
        yield holder, snapshot
    finally:
        holder.close()


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


# Settings that change how COPY writes values and that pg_dump leaves to the session's defaults
# (it sets DateStyle, IntervalStyle and extra_float_digits itself; PGTZ fixes the time zone).
OUTPUT_SETTINGS = ("bytea_output", "lc_monetary")


def dump_session_settings(holder: psycopg.Connection) -> dict[str, str]:
    """How pg_dump's session formats values, so a restored copy can be read back the same way."""
    found = {"TimeZone": "UTC"}
    for name in OUTPUT_SETTINGS:
        found[name] = str(holder.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0])  # type: ignore[index]
    return found

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

# The counts taken in the snapshot live in pgdb (restore and verify count a database the same way);
# re-exported here for the dump.
from pgkeeper.pgdb import object_counts as object_counts
from pgkeeper.pgdb import table_row_counts as table_row_counts


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


# Settings that change how COPY writes values and that pg_dump leaves to the session's defaults
# (it sets DateStyle, IntervalStyle and extra_float_digits itself; PGTZ fixes the time zone).
OUTPUT_SETTINGS = ("bytea_output", "lc_monetary")


def dump_session_settings(holder: psycopg.Connection) -> dict[str, str]:
    """How pg_dump's session formats values, so a restored copy can be read back the same way."""
    found = {"TimeZone": "UTC"}
    for name in OUTPUT_SETTINGS:
        found[name] = str(holder.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0])  # type: ignore[index]
    return found

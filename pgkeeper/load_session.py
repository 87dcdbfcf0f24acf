"""Session settings for pg_restore's connections into a shadow database, and the durable point
after them.

A restore into a shadow is a bulk load nobody sees until the swap. pg_restore commits every TOC
entry (each table's COPY among them) and by default waits for each commit's WAL flush, so a big
COPY ends waiting for the disk to take all its WAL. With `synchronous_commit = off` (an ordinary
user setting, passed as PGOPTIONS in the child's environment) the WAL writer flushes it in the
background meanwhile. Safe here because `make_durable` then commits one transaction synchronously
before anything is counted or proven: WAL is flushed in order, so that flush covers every commit
pg_restore made, and a crash before it loses only a shadow the flow (or the next run) drops.

Measured and left alone: a larger `maintenance_work_mem` (docs/performance.md, section 4) did not
make the primary keys' sorts cheaper and made a GIN index build slower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgkeeper.blocks.postgres import PostgresConnection

LOAD_SETTINGS = {"synchronous_commit": "off"}


def pgoptions(settings: dict[str, str]) -> str:
    """`-c name=value ...` for PGOPTIONS (spaces and backslashes escaped as libpq wants)."""
    return " ".join(f"-c {k}={v.replace(chr(92), chr(92) * 2).replace(' ', chr(92) + ' ')}"
                    for k, v in settings.items())


def make_durable(conn: PostgresConnection, database: str) -> None:
    """Commit one transaction with an id synchronously in `database`: its commit waits for the WAL
    flush, and WAL flushes in order, so every commit made before it (pg_restore's, asynchronous)
    is on disk when this returns."""
    with conn.connect(database=database) as c:
        c.execute("SET LOCAL synchronous_commit = on")
        c.execute("SELECT pg_catalog.txid_current()")  # assigns an id, so the commit writes a record
        c.commit()

"""The restore drill: put the dump into a scratch database, count it, and always drop it.

The scratch database is named after the flow run (pgkeeper_verify_<8 hex of the run id>), so
the flow's on_crashed / on_cancellation hooks, which may run after this task's own cleanup
was cut short, can find and drop it without any state handed over.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from pgkeeper.alerts import warn
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.config import load_block, load_connection
from pgkeeper.errors import NotFound
from pgkeeper.pgdb import (
    count_database,
    create_database,
    database_exists,
    databases_with_prefix,
    drop_database,
)
from pgkeeper.tasks.pg_restore import pg_restore_into
from pgkeeper.tasks.policy import RETRYABLE

SCRATCH_PREFIX = "pgkeeper_verify_"


class DrillResult(BaseModel):
    database: str
    server: str = Field(description="user@host:port the drill restored into")
    restore_seconds: float
    tables: dict[str, int]
    objects: dict[str, int]


def scratch_database_name(run_id: str | uuid.UUID | None) -> str:
    """pgkeeper_verify_<short id> for a flow run (a random one outside a run)."""
    hex_id = uuid.UUID(str(run_id)).hex if run_id else uuid.uuid4().hex
    return SCRATCH_PREFIX + hex_id[:8]


def scratch_connection(connection_block: str | None, scratch_connection_block: str | None = None,
                       host: str | None = None, port: int | None = None,
                       user: str | None = None) -> PostgresConnection:
    """The server the drill restores into: a named block, else the backed-up database's server."""
    if scratch_connection_block:
        conn = load_block(PostgresConnection, scratch_connection_block)
        if conn is None:
            raise NotFound(f"no pgkeeper-postgres-connection block named {scratch_connection_block!r}")
        return conn
    return load_connection(connection_block, host=host, port=port, user=user)


@contextmanager
def work_area(base: str | None = None) -> Iterator[Path]:
    """A private directory for the decompressed archive, removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix="pgkeeper-verify-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _drop(conn: PostgresConnection, name: str, quiet: bool) -> None:
    try:
        drop_database(conn, name)
    except Exception as exc:
        if not quiet:
            raise
        # Another error is already on its way out; do not hide it, but say what is left behind.
        get_run_logger().error("scratch database %s on %s could not be dropped: %s",
                               name, conn.describe(name), exc)


@task(name="restore-drill", cache_policy=NO_CACHE, **RETRYABLE)
def restore_drill(scratch: PostgresConnection, archive: str, name: str, jobs: int = 2,
                  timeout_seconds: float = 6 * 3600, source_database: str | None = None) -> DrillResult:
    """Test 3: pg_restore into a new scratch database, count what arrived, drop it."""
    log = get_run_logger()
    drop_database(scratch, name)  # a leftover of an earlier attempt of this same run
    others = [d for d in databases_with_prefix(scratch, SCRATCH_PREFIX) if d != name]
    if others:
        # A run killed outright (SIGKILL, power loss) never reached its cleanup. It may also be
        # another drill in progress, so a person decides: we only say so.
        warn("scratch-leftover", f"scratch databases on {scratch.describe(others[0]).rsplit('/', 1)[0]} "
             f"that may be left over from killed verify runs: {', '.join(others)} (drop them if no verify "
             "is running)", database=source_database, leftovers=others)
    create_database(scratch, name)
    failed = True
    try:
        log.info("restoring into scratch database %s (%d jobs)", scratch.describe(name), jobs)
        seconds = pg_restore_into(scratch, Path(archive), name, jobs=jobs, timeout=timeout_seconds)
        tables, objects = count_database(scratch, name)
        failed = False
    finally:
        # Also on TerminationSignal (SIGTERM, cancellation): pgtools.child has killed pg_restore
        # by now, and DROP ... WITH (FORCE) ends the server sessions it left.
        _drop(scratch, name, quiet=failed)
    log.info("scratch database %s dropped", name)
    return DrillResult(database=name, server=scratch.describe(name).rsplit('/', 1)[0],
                       restore_seconds=seconds, tables=tables, objects=objects)


def drop_scratch_after_run(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (on_crashed, on_cancellation): make sure the run's scratch database is gone."""
    from prefect.logging import get_logger

    logger = get_logger("pgkeeper.verify")
    params = dict(getattr(flow_run, "parameters", None) or {})
    if not params.get("restore", True):
        return
    name = scratch_database_name(flow_run.id)
    try:
        conn = scratch_connection(params.get("connection_block"), params.get("scratch_connection_block"),
                                  params.get("host"), params.get("port"), params.get("user"))
        if not database_exists(conn, name):
            logger.info("verify run %s ended %s: scratch database %s was already gone", flow_run.name,
                        state.name, name)
            return
        drop_database(conn, name)
        logger.warning("verify run %s ended %s: scratch database %s was left behind and is now dropped",
                       flow_run.name, state.name, name)
    except Exception as exc:
        logger.error("verify run %s ended %s and scratch database %s could not be dropped: %s",
                     flow_run.name, state.name, name, exc)

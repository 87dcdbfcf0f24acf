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

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel, Field

from pgkeeper import dbprops, roles
from pgkeeper.alerts import warn
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.codec import checked_chunks
from pgkeeper.config import load_block, load_connection
from pgkeeper.content_check import ArchiveReading, prove_content
from pgkeeper.errors import NotFound
from pgkeeper.liveness import claim_dir, clear_dead_dirs, maker_is_dead, owner_tag, tag_run_id
from pgkeeper.manifest import Manifest
from pgkeeper.pgdb import (
    admin_connection,
    count_database,
    create_database,
    database_exists,
    databases_with_prefix,
    drop_database,
)
from pgkeeper.pgrestore import pg_restore_into
from pgkeeper.tasks.policy import RETRYABLE

SCRATCH_PREFIX = "pgkeeper_verify_"


class DrillResult(BaseModel):
    database: str
    server: str = Field(description="user@host:port the drill restored into")
    restore_seconds: float
    tables: dict[str, int]
    objects: dict[str, int]
    differences: list[str] = Field(default_factory=list, description="what differs from the backup")
    content_compared: bool = Field(default=False, description="data compared, not only counted")


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
    clear_dead_dirs(Path(base or tempfile.gettempdir()), "pgkeeper-verify-")  # left by killed runs
    path = Path(tempfile.mkdtemp(prefix="pgkeeper-verify-", dir=base))
    claim_dir(path)
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


def _roles_for_drill(scratch: PostgresConnection, repo: BackupRepository, source: str, manifest: Manifest) -> list[str]:
    """Create on the scratch server the roles the backup needs and it lacks (a drill on another
    server restores with owners and grants, as a real restore would); returns their names."""
    with admin_connection(scratch) as c:
        missing = roles.missing_roles(c, manifest.roles)
    globals_file = manifest.globals_file
    if not missing or globals_file is None:
        return []
    data = bytearray()
    with repo.storage(source).open_plain(manifest.backup_id, globals_file) as stream:
        checked_chunks(stream, manifest.compression, f"{manifest.backup_id}/{globals_file.name}", data.extend)
    with admin_connection(scratch) as c:
        return roles.create_missing(c, roles.ClusterGlobals.from_bytes(bytes(data)), missing)


def _drop_roles(scratch: PostgresConnection, names: list[str]) -> None:
    with admin_connection(scratch) as c:
        for name in reversed(names):
            try:
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:  # it owns something elsewhere by now: leave it, say so
                get_run_logger().warning("role %s created for the drill was kept: %s", name, exc)


def clear_leftovers(scratch: PostgresConnection, keep: str, source_database: str | None) -> None:
    """Drop scratch databases of verify runs that are provably dead; warn about the others."""
    others = [d for d in databases_with_prefix(scratch, SCRATCH_PREFIX) if d != keep]
    if not others:
        return
    with admin_connection(scratch) as c:
        comments = dict(c.execute("SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                                  "WHERE datname = ANY(%s)", (others,)).fetchall())
    dead = [d for d in others if maker_is_dead(comments.get(d) or "") or run_has_ended(comments.get(d) or "")]
    for name in dead:
        drop_database(scratch, name)
        get_run_logger().warning("dropped scratch database %s of a verify run that was killed", name)
    alive = [d for d in others if d not in dead]
    if alive:
        # Another drill in progress, or one whose maker cannot be judged from here.
        warn("scratch-leftover", f"scratch databases on {scratch.describe(alive[0]).rsplit('/', 1)[0]} "
             f"that may be left over from killed verify runs: {', '.join(alive)} (drop them if no verify "
             "is running)", database=source_database, leftovers=alive)


@task(name="restore-drill", cache_policy=NO_CACHE, **RETRYABLE)
def restore_drill(scratch: PostgresConnection, archive: str, name: str, jobs: int = 2,
                  timeout_seconds: float = 6 * 3600, manifest: Manifest | None = None,
                  repo: BackupRepository | None = None, source: str = "local") -> DrillResult:
    """Test 3: restore into a new scratch database as a real restore would (owners, grants, the
    database's properties), prove its content against the archive, count it, drop it."""
    log = get_run_logger()
    from prefect.runtime import flow_run

    drop_database(scratch, name)  # a leftover of an earlier attempt of this same run
    clear_leftovers(scratch, name, manifest.database if manifest else None)
    props = manifest.database_properties if manifest else None
    created_roles = _roles_for_drill(scratch, repo, source, manifest) if manifest and repo else []
    # Reads the archive as SQL while pg_restore runs (or takes what this host kept for the dump,
    # whose checksum test 1 proved); a complete read is kept for the restores that follow.
    reading = ArchiveReading(Path(archive), kept=manifest.dump_file.sha256 if manifest else None)
    failed = True
    try:
        create_database(scratch, name, props, props.owner if props else None,
                        comment=f"pgkeeper verify scratch by {owner_tag(str(flow_run.id or '') or None)}")
        log.info("restoring into scratch database %s (%d jobs)", scratch.describe(name), jobs)
        seconds = pg_restore_into(scratch, Path(archive), name, jobs=jobs, timeout=timeout_seconds)
        if props is not None:
            with admin_connection(scratch) as c:
                dbprops.apply_after_restore(c, name, props)
        tables, objects = count_database(scratch, name)
        differences = prove_content(scratch, name, Path(archive), props,
                                    manifest.dump_settings if manifest else {}, reading=reading)
        failed = False
    finally:
        # Also on TerminationSignal (SIGTERM, cancellation): pgtools.child has killed pg_restore
        # by now, and DROP ... WITH (FORCE) ends the server sessions it left.
        _drop(scratch, name, quiet=failed)
        if created_roles:
            _drop_roles(scratch, created_roles)
    log.info("scratch database %s dropped", name)
    return DrillResult(database=name, server=scratch.describe(name).rsplit('/', 1)[0],
                       restore_seconds=seconds, tables=tables, objects=objects, differences=differences,
                       content_compared=bool(manifest and manifest.dump_settings))


def run_has_ended(comment: str) -> bool:
    """True when the tag names a Prefect flow run that is no longer running (Crashed, Failed...)."""
    run_id = tag_run_id(comment)
    if not run_id:
        return False
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(run_id)).state
    except Exception:  # no API, no such run: cannot judge, so not dead
        return False
    return state is not None and state.is_final()


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

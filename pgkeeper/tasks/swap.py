"""Putting a restored database in place of the live one, and taking it back out.

The swap is one transaction that ends the live database's sessions and makes both renames, so
it happens whole or not at all: there is no moment where the target name is missing, and no
committed half-state (such as a database refusing connections) that a killed process could leave.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel

from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.errors import SwapFailed
from pgkeeper.fmt import first_line
from pgkeeper.liveness import maker_is_dead
from pgkeeper.names import check_identifier
from pgkeeper.old_copy import OLD_COPY_MARK, PENDING, old_copy_comment, read_mark, with_safety_backup
from pgkeeper.pgdb import USER_TABLES, admin_connection
from pgkeeper.pgdb import drop_database as drop_if_exists  # the name restore's callers know
from pgkeeper.shadowdb import MAX_NAME, SHADOW_MARK, create_shadow, shadow_name  # noqa: F401  # their old home
from pgkeeper.tasks.policy import RETRYABLE

_KEEP_UNTIL = re.compile(r"keep until ([^;\s]+)")
_SINCE = re.compile(r"since (\S+)")
# A shadow this old with nobody connected is the leftover of a killed restore, not a slow one:
# pg_restore stays connected to its shadow for the whole restore.
STALE_SHADOW = timedelta(hours=24)


class SwapResult(BaseModel):
    target: str
    retired_as: str | None  # where the previous database went (None: there was none)
    terminated: int
    seconds: float
    oid: int  # of the database now called `target`: the restored one, whatever its name was


def database_oid(c: psycopg.Connection, name: str) -> int | None:
    row = c.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return int(row[0]) if row else None


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def old_copy_name(target: str, now: datetime) -> str:
    suffix = now.astimezone(UTC).strftime("_pre_restore_%Y%m%d_%H%M%S")
    return check_identifier("database", target[: MAX_NAME - len(suffix)] + suffix)


def connection_settings(c: psycopg.Connection, name: str) -> tuple[bool, int] | None:
    row = c.execute("SELECT datallowconn, datconnlimit FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return (bool(row[0]), int(row[1])) if row else None


def sessions_on(c: psycopg.Connection, name: str) -> int:
    row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,)).fetchone()
    return int(row[0]) if row else 0


def swap_databases(conn: PostgresConnection, live: str, incoming: str, retire_as: str | None,
                   comment: str | None = None, live_comment: str | None = None, attempts: int = 5,
                   lock_timeout_s: float = 10.0) -> SwapResult:
    """Put `incoming` under the name `live`; the previous `live` becomes `retire_as`.

    Everything happens in one transaction: the sessions on `live` are ended and both renames
    made, or nothing is. The first rename holds the database's lock, so a client reconnecting
    meanwhile waits and then finds the restored database; a session that slipped in before the
    lock makes the attempt fail and it is tried again. Nothing is committed on its own, so a
    SIGKILL at any instant leaves `live` connectable, with either the old or the new content.
    """
    started = time.monotonic()
    with admin_connection(conn) as c:
        oid = database_oid(c, incoming)
        if oid is None:
            raise SwapFailed(f"database {incoming!r} to put in place does not exist")
        exists = database_oid(c, live) is not None
        if exists and retire_as is None:
            raise SwapFailed(f"database {live!r} exists and no name to keep it under was given")
        # Termination is not transactional: sessions ended by an attempt that failed stay ended, and count.
        ended: set[int] = set()
        last_error = "unknown"
        for attempt in range(attempts):
            try:
                with c.transaction():
                    c.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_s)}s")))
                    _terminate(c, incoming)
                    if exists:
                        assert retire_as is not None
                        ended |= _terminate(c, live)
                        c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(live), _ident(retire_as)))
                        c.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                            _ident(retire_as), sql.Literal(comment) if comment else sql.NULL))
                    c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(incoming), _ident(live)))
                    c.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        _ident(live), sql.Literal(live_comment) if live_comment else sql.NULL))
                return SwapResult(target=live, retired_as=retire_as if exists else None, terminated=len(ended),
                                  seconds=time.monotonic() - started, oid=oid)
            except (psycopg.errors.ObjectInUse, psycopg.errors.LockNotAvailable) as exc:
                last_error = first_line(exc, type(exc).__name__)  # a session slipped in before the lock: again
                time.sleep(0.1 * (attempt + 1))
            except psycopg.Error as exc:
                last_error = first_line(exc, type(exc).__name__)
                break
        raise SwapFailed(f"could not swap {incoming!r} into place as {live!r}: {last_error}")


def _terminate(c: psycopg.Connection, name: str) -> set[int]:
    """Ask every other session on `name` to end (the rename then waits up to 5 s for them); their pids."""
    rows = c.execute("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchall()
    return {pid for pid, ok in rows if ok}


def _marked_databases(conn: PostgresConnection, mark: str,
                      when: re.Pattern[str]) -> list[tuple[str, datetime, str]]:
    """(name, time, comment) of databases whose comment starts with `mark`, the time read with `when`."""
    with admin_connection(conn) as c:
        rows = c.execute(
            "SELECT d.datname, shobj_description(d.oid, 'pg_database') FROM pg_database d "
            "WHERE shobj_description(d.oid, 'pg_database') LIKE %s ORDER BY 1", (mark + "%",)).fetchall()
    found = []
    for name, comment in rows:
        m = when.search(comment or "")
        if not m:
            continue
        try:
            found.append((name, datetime.fromisoformat(m.group(1)), comment))
        except ValueError:
            continue
    return found


def expired_old_copies(conn: PostgresConnection, now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Pre-restore copies (found by their comment) whose keep-until time has passed: those that may
    go, and those kept because their safety backup was never listed (the only copy of what a
    restore replaced)."""
    now = now or datetime.now(UTC)
    expired, unsaved = [], []
    for name, until, comment in _marked_databases(conn, OLD_COPY_MARK, _KEEP_UNTIL):
        if until <= now:
            mark = read_mark(comment)
            (unsaved if mark is not None and mark.safety == PENDING else expired).append(name)
    return expired, unsaved


def comment_of(conn: PostgresConnection, name: str) -> str | None:
    with admin_connection(conn) as c:
        row = c.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                        (name,)).fetchone()
    return row[0] if row else None


@task(name="record-safety-backup", cache_policy=NO_CACHE, **RETRYABLE)
def record_safety_backup(conn: PostgresConnection, copy: str, backup_id: str) -> None:
    """Write the listed safety backup's id into the pre-restore copy's mark: from now on the copy
    may expire (or be dropped by `--drop-old`), its content being in the repository."""
    comment = comment_of(conn, copy)
    if read_mark(comment) is None:
        return
    assert comment is not None
    try:
        with admin_connection(conn) as c:
            c.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                _ident(copy), sql.Literal(with_safety_backup(comment, backup_id))))
    except psycopg.errors.InsufficientPrivilege as exc:  # a backup-only role: the backup stands
        get_run_logger().warning("%s: its safety backup %s is listed, but the copy's mark could not say so (%s): "
                                 "it stays held; drop it when you no longer need it", copy, backup_id,
                                 first_line(exc, type(exc).__name__))
        return
    get_run_logger().info("%s: its safety backup %s is listed; it may now expire", copy, backup_id)


def stale_shadows(conn: PostgresConnection, now: datetime | None = None) -> list[str]:
    """Shadow databases (found by their comment) of restores whose process is gone, or that began
    over STALE_SHADOW ago."""
    now = now or datetime.now(UTC)
    return [name for name, since, comment in _marked_databases(conn, SHADOW_MARK, _SINCE)
            if now - since >= STALE_SHADOW or maker_is_dead(comment)]


@task(name="swap-into-place", cache_policy=NO_CACHE)
def swap_into_place(conn: PostgresConnection, target: str, shadow: str, retire_as: str | None, backup_id: str,
                    keep_hours: float, comment: str | None = None, safety_pending: bool = False) -> SwapResult:
    """End the target's sessions and rename in one transaction; the restored database gets the
    backup's database comment, the previous one a mark (pgkeeper/old_copy.py) that keeps its own
    comment and, with `safety_pending`, holds it until its safety backup is listed."""
    now = datetime.now(UTC)
    retire_as = retire_as or old_copy_name(target, now)  # the target may have appeared since the plan
    old_comment = old_copy_comment(target, backup_id, keep_hours, now, comment_of(conn, target), safety_pending)
    result = swap_databases(conn, live=target, incoming=shadow, retire_as=retire_as, comment=old_comment,
                            live_comment=comment)
    logger = get_run_logger()
    if result.retired_as:
        logger.info("%s is now the restored database (%d session(s) ended); the previous one is %s",
                    target, result.terminated, result.retired_as)
    else:
        logger.info("%s created from the restored copy", target)
    return result


@task(name="check-swapped", cache_policy=NO_CACHE, **RETRYABLE)
def check_swapped(conn: PostgresConnection, swap: SwapResult, expected_tables: int) -> None:
    """The database now called the target is the one restored and counted (same oid: a rename
    moves no data, so its counts still hold), it accepts connections and holds every table."""
    with admin_connection(conn) as c:
        oid = database_oid(c, swap.target)
        settings = connection_settings(c, swap.target)
    if oid != swap.oid:
        raise SwapFailed(f"{swap.target!r} is not the restored database after the swap")
    if not settings or not settings[0]:
        raise SwapFailed(f"{swap.target!r} does not accept connections after the swap")
    with conn.connect(database=swap.target) as c:
        c.execute("BEGIN READ ONLY")
        tables = len(c.execute(USER_TABLES).fetchall())
    if tables != expected_tables:
        raise SwapFailed(f"{swap.target!r} holds {tables} tables after the swap, the backup {expected_tables}")


@task(name="swap-back", cache_policy=NO_CACHE)
def swap_back(conn: PostgresConnection, target: str, retired_as: str | None, shadow: str,
              comment: str | None = None) -> None:
    """Undo a swap: the previous database gets its name (and comment) back, the restored one is dropped."""
    if retired_as is None:
        drop_if_exists(conn, target)
        return
    swap_databases(conn, live=target, incoming=retired_as, retire_as=shadow, live_comment=comment)
    drop_if_exists(conn, shadow)
    get_run_logger().warning("swap undone: %s is the database it was before the restore", target)


@task(name="drop-database", cache_policy=NO_CACHE)
def drop_database_task(conn: PostgresConnection, name: str) -> None:
    """Drop a database we made (the shadow after a failure, the old copy when not kept)."""
    drop_if_exists(conn, name)


@task(name="expire-old-copies", cache_policy=NO_CACHE)
def expire_old_copies(conn: PostgresConnection) -> list[str]:
    """Drop pre-restore copies past their keep-until time, and shadows of killed restores;
    a database someone is connected to is left alone."""
    logger = get_run_logger()
    dropped = []
    expired, unsaved = expired_old_copies(conn)
    for name in unsaved:
        logger.warning("pre-restore copy %s is past its time but its safety backup was never listed: kept "
                       "(back it up with `pgkeeper backup --database %s`, or drop it)", name, name)
    for name, what in [*((n, "expired pre-restore copy") for n in expired),
                       *((n, "shadow database of an interrupted restore") for n in stale_shadows(conn))]:
        with admin_connection(conn) as c:
            if sessions_on(c, name):
                logger.warning("%s %s is in use: left in place", what, name)
                continue
            try:
                c.execute(sql.SQL("DROP DATABASE {}").format(_ident(name)))
            except psycopg.Error as exc:
                logger.warning("could not drop %s %s: %s", what, name, first_line(exc, type(exc).__name__))
                continue
        logger.info("dropped %s %s", what, name)
        dropped.append(name)
    return dropped

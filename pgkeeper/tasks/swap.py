"""Putting a restored database in place of the live one, and taking it back out.

The swap is one transaction holding both renames, so it either happens whole or not at all:
there is no moment where the target name is missing. Before it, the live database stops
accepting connections (ALLOW_CONNECTIONS false applies to superusers too), so a client that
reconnects between "terminate" and "rename" is refused instead of blocking the rename.
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
from pgkeeper.errors import PgkeeperError
from pgkeeper.names import check_identifier
from pgkeeper.pgdb import MAINTENANCE_DB
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tasks.snapshot import USER_TABLES

OLD_COPY_MARK = "pgkeeper pre-restore copy"
SHADOW_MARK = "pgkeeper restore in progress"
_KEEP_UNTIL = re.compile(r"keep until (\S+)")
_SINCE = re.compile(r"since (\S+)")
# A shadow this old with nobody connected is the leftover of a killed restore, not a slow one:
# pg_restore stays connected to its shadow for the whole restore.
STALE_SHADOW = timedelta(hours=24)
MAX_NAME = 63


class SwapFailed(PgkeeperError):
    """The restored database could not be put in place; the live one is as it was."""


class SwapResult(BaseModel):
    target: str
    retired_as: str | None  # where the previous database went (None: there was none)
    terminated: int
    seconds: float
    oid: int  # of the database now called `target`: the restored one, whatever its name was


def database_oid(c: psycopg.Connection, name: str) -> int | None:
    row = c.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return int(row[0]) if row else None


def _admin(conn: PostgresConnection) -> psycopg.Connection:
    db = MAINTENANCE_DB if conn.database != MAINTENANCE_DB else "template1"
    return conn.connect(database=db, autocommit=True)


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def shadow_name(target: str, token: str) -> str:
    suffix = f"_restoring_{token}"
    return check_identifier("database", target[: MAX_NAME - len(suffix)] + suffix)


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


def terminate_all(c: psycopg.Connection, name: str, wait_s: float = 15.0) -> int:
    """End every session on `name` and wait until they are really gone (termination is async)."""
    ended = 0
    deadline = time.monotonic() + wait_s
    while True:
        rows = c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchall()
        ended += sum(1 for (ok,) in rows if ok)
        if sessions_on(c, name) == 0:
            return ended
        if time.monotonic() > deadline:
            raise SwapFailed(f"sessions on {name!r} did not end within {wait_s:.0f} s")
        time.sleep(0.05)


def create_shadow(conn: PostgresConnection, shadow: str, like: str | None) -> None:
    """An empty database for the restore: encoding, collation, owner and per-database settings
    copied from `like` (the database it will replace), so the swap changes data, not behaviour.

    The dump (taken without --create) carries none of these; a database created from template0
    with server defaults could sort text differently or lose the owner's rights.
    """
    check_identifier("database", shadow)
    with _admin(conn) as c:
        props = None
        if like:
            props = c.execute(
                "SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, r.rolname "
                "FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = %s",
                (like,)).fetchone()
        if props:
            encoding, collate, ctype, owner = props
            c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {} "
                              "OWNER {}").format(_ident(shadow), sql.Literal(encoding), sql.Literal(collate),
                                                 sql.Literal(ctype), _ident(owner)))
            settings = c.execute(
                "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = %s AND s.setrole = 0", (like,)).fetchall()
            for (item,) in settings:
                key, _, value = item.partition("=")
                c.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    _ident(shadow), _ident(key), sql.Literal(value)))
            copy_database_privileges(c, like, shadow)
        else:
            c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(_ident(shadow)))
        c.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            _ident(shadow), sql.Literal(f"{SHADOW_MARK} since {datetime.now(UTC).isoformat(timespec='seconds')}")))


def copy_database_privileges(c: psycopg.Connection, source: str, dest: str) -> None:
    """GRANTs on the database itself (CONNECT, TEMP, CREATE): a `REVOKE CONNECT FROM PUBLIC` on
    the target must not quietly become the default's "everyone may connect"."""
    acl = c.execute("SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s", (source,)).fetchone()
    if not acl or not acl[0]:
        return  # default privileges, which the new database has too
    c.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(dest)))
    rows = c.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
        "a.is_grantable FROM pg_database d, aclexplode(d.datacl) a "
        "WHERE d.datname = %s AND a.grantee <> d.datdba", (source,)).fetchall()
    for grantee, privilege, grantable in rows:
        c.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
            sql.SQL(privilege), _ident(dest), _ident(grantee) if grantee else sql.SQL("PUBLIC"),
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))


def drop_if_exists(conn: PostgresConnection, name: str) -> None:
    check_identifier("database", name)
    with _admin(conn) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_ident(name)))


def swap_databases(conn: PostgresConnection, live: str, incoming: str, retire_as: str | None,
                   comment: str | None = None, attempts: int = 5) -> SwapResult:
    """Put `incoming` under the name `live`; the previous `live` becomes `retire_as`.

    With no database called `live` yet, `incoming` is simply renamed. On any failure the
    names and the connection setting of `live` are as they were, and SwapFailed says so.
    """
    started = time.monotonic()
    with _admin(conn) as c:
        before = connection_settings(c, live)
        oid = database_oid(c, incoming)
        if oid is None:
            raise SwapFailed(f"database {incoming!r} to put in place does not exist")
        if before is None:
            try:
                terminate_all(c, incoming)
                with c.transaction():
                    c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(incoming), _ident(live)))
                    c.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(_ident(live)))
            except psycopg.Error as exc:
                raise SwapFailed(f"could not rename {incoming!r} to {live!r}: {_first_line(exc)}") from None
            return SwapResult(target=live, retired_as=None, terminated=0, seconds=time.monotonic() - started,
                              oid=oid)
        assert retire_as is not None
        allow_before, _ = before
        c.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(_ident(live)))
        ended = 0
        last_error = "unknown"
        try:
            for _ in range(attempts):
                ended += terminate_all(c, live)
                terminate_all(c, incoming)
                try:
                    with c.transaction():
                        c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(live), _ident(retire_as)))
                        c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(incoming), _ident(live)))
                        c.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                            _ident(retire_as), sql.SQL("true" if allow_before else "false")))
                        c.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(_ident(live)))
                        c.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                            _ident(retire_as), sql.Literal(comment) if comment else sql.NULL))
                        c.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(_ident(live)))
                    return SwapResult(target=live, retired_as=retire_as, terminated=ended,
                                      seconds=time.monotonic() - started, oid=oid)
                except psycopg.errors.ObjectInUse as exc:
                    last_error = _first_line(exc)  # a session slipped in before ALLOW_CONNECTIONS: again
                    continue
                except psycopg.Error as exc:
                    last_error = _first_line(exc)
                    break
        except BaseException:
            _restore_connections(c, live, allow_before)
            raise
        _restore_connections(c, live, allow_before)
        raise SwapFailed(f"could not swap {incoming!r} into place as {live!r}: {last_error}")


def _restore_connections(c: psycopg.Connection, name: str, allow: bool) -> None:
    """Give the untouched live database its connection setting back."""
    c.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        _ident(name), sql.SQL("true" if allow else "false")))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def old_copy_comment(target: str, backup_id: str, keep_hours: float, now: datetime) -> str:
    until = (now + timedelta(hours=keep_hours)).astimezone(UTC).isoformat(timespec="seconds")
    return (f"{OLD_COPY_MARK} of {target}, replaced by backup {backup_id} at "
            f"{now.astimezone(UTC).isoformat(timespec='seconds')}; keep until {until}")


def _marked_databases(conn: PostgresConnection, mark: str, when: re.Pattern[str]) -> list[tuple[str, datetime]]:
    """(name, time) of databases whose comment starts with `mark`, the time read with `when`."""
    with _admin(conn) as c:
        rows = c.execute(
            "SELECT d.datname, shobj_description(d.oid, 'pg_database') FROM pg_database d "
            "WHERE shobj_description(d.oid, 'pg_database') LIKE %s ORDER BY 1", (mark + "%",)).fetchall()
    found = []
    for name, comment in rows:
        m = when.search(comment or "")
        if not m:
            continue
        try:
            found.append((name, datetime.fromisoformat(m.group(1))))
        except ValueError:
            continue
    return found


def expired_old_copies(conn: PostgresConnection, now: datetime | None = None) -> list[str]:
    """Pre-restore copies (found by their comment) whose keep-until time has passed."""
    now = now or datetime.now(UTC)
    return [name for name, until in _marked_databases(conn, OLD_COPY_MARK, _KEEP_UNTIL) if until <= now]


def stale_shadows(conn: PostgresConnection, now: datetime | None = None) -> list[str]:
    """Shadow databases (found by their comment) of restores that began over STALE_SHADOW ago."""
    now = now or datetime.now(UTC)
    return [name for name, since in _marked_databases(conn, SHADOW_MARK, _SINCE) if now - since >= STALE_SHADOW]


@task(name="swap-into-place", cache_policy=NO_CACHE)
def swap_into_place(conn: PostgresConnection, target: str, shadow: str, retire_as: str | None, backup_id: str,
                    keep_hours: float) -> SwapResult:
    """Stop new connections to the target, end its sessions, and rename in one transaction."""
    now = datetime.now(UTC)
    retire_as = retire_as or old_copy_name(target, now)  # the target may have appeared since the plan
    comment = old_copy_comment(target, backup_id, keep_hours, now)
    result = swap_databases(conn, live=target, incoming=shadow, retire_as=retire_as, comment=comment)
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
    with _admin(conn) as c:
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
def swap_back(conn: PostgresConnection, target: str, retired_as: str | None, shadow: str) -> None:
    """Undo a swap: the previous database gets its name back, the restored one is dropped."""
    if retired_as is None:
        drop_if_exists(conn, target)
        return
    swap_databases(conn, live=target, incoming=retired_as, retire_as=shadow)
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
    for name, what in [*((n, "expired pre-restore copy") for n in expired_old_copies(conn)),
                       *((n, "shadow database of an interrupted restore") for n in stale_shadows(conn))]:
        with _admin(conn) as c:
            if sessions_on(c, name):
                logger.warning("%s %s is in use: left in place", what, name)
                continue
            try:
                c.execute(sql.SQL("DROP DATABASE {}").format(_ident(name)))
            except psycopg.Error as exc:
                logger.warning("could not drop %s %s: %s", what, name, _first_line(exc))
                continue
        logger.info("dropped %s %s", what, name)
        dropped.append(name)
    return dropped

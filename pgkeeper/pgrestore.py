"""Putting a stored dump back into a database with pg_restore.

The stored file is decompressed (checksum-checked on the same pass) into a local work file,
because pg_restore -j needs a seekable archive. Once its checksum is proven, the work file's
table of contents gets the data offsets pg_dump could not write to a pipe (dumpoffsets.py), so
each pg_restore -j worker seeks to its table's data instead of reading through the blocks before
it: the file is then the one `pg_dump -Fc -f FILE` writes.

A parallel restore can say when its data section is loaded (`on_data_loaded`): pg_restore -v
names each item it finishes, and once every item of the data section is finished the tables'
contents are final (the post-data section builds indexes, constraints and triggers; none of it
changes a row). The caller then reads the data back beside the post-data section. That reader
only ever takes ACCESS SHARE locks (pg_dump); such a lock conflicts only with ACCESS EXCLUSIVE,
so a post-data statement can wait for the reader (an `ADD PRIMARY KEY` does) and the reader
for a running statement, but a deadlock needs one restore transaction holding ACCESS EXCLUSIVE
on one relation while waiting for it on another. The archive is watched only when every
post-data entry is of a kind that locks one relation that way at most (OVERLAP_POST_DATA_KINDS:
indexes, one table's constraints, triggers, foreign keys, which take SHARE ROW EXCLUSIVE, and
comments and grants), and not at all for partitioned tables, whose statements can recurse to
the partitions; anything else (a REFRESH MATERIALIZED VIEW, a policy, a rule, a NOT VALID
check) restores as before and is read after the whole restore. Neither side has a lock timeout
(pg_restore and pg_dump both set lock_timeout = 0), so a wait ends when the other side is done.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from psycopg import sql

from pgkeeper import pgtools
from pgkeeper.load_session import pgoptions

if TYPE_CHECKING:  # a type only: `pgkeeper restore`'s early child restores through here without Prefect
    from pgkeeper.blocks.postgres import PostgresConnection

# What the data section of a pg_dump archive holds, and the post-data entries that may run while
# the data is read back (each takes ACCESS EXCLUSIVE on one relation at most; see above).
DATA_KINDS = ("TABLE DATA", "SEQUENCE SET", "BLOBS")
OVERLAP_POST_DATA_KINDS = ("INDEX", "CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "COMMENT", "ACL", "SECURITY LABEL")
_PARTITIONING_KINDS = ("TABLE ATTACH", "INDEX ATTACH")
# The workers and the leader share stderr, and pg_restore writes each message in pieces
# (logging.c: "pg_restore:", then " ", then a level such as "warning: ", then the message and its
# newline), so another process's pieces can come between them: seen in -j2 runs, lines such as
# "pg_restore:pg_restore: finished item 3229 ..." and " finished item 3249 ..." (the "pg_restore:"
# on the line before). A message is written whole, so a line is any such pieces, then one message.
# (A tag with a newline could fake a line; a read started too early sees a table's COPY not yet
# committed, so the proof fails the restore, it never passes a wrong one.)
_FINISHED = re.compile(rb"^(?:pg_restore:|[a-z]+: | )*finished item (\d+) ")


def finished_item(line: bytes) -> str | None:
    """The dump id of a `finished item N` line of pg_restore -v's stderr, else None."""
    found = _FINISHED.match(line)
    return found.group(1).decode() if found else None


def pg_restore_into(conn: PostgresConnection, archive: Path, database: str, jobs: int = 2,
                    no_owner: bool = False, role: str | None = None, timeout: float = 6 * 3600,
                    options: dict[str, str] | None = None,
                    on_data_loaded: Callable[[], None] | None = None) -> float:
    """Restore `archive` into the existing empty `database`; return the seconds it took.

    By default objects get their original owners and GRANTs (the roles must exist). With
    `no_owner`, ownership and GRANTs are left out and everything is created as `role` (the
    database's owner), never silently as the superuser we connect as; public_revokes()
    then keeps what the backup had revoked from PUBLIC. --exit-on-error: a partial restore is a
    failed restore. `options`: settings for pg_restore's sessions (PGOPTIONS, load_session.py).
    `on_data_loaded`: called (once, from this thread) when every item of the data section is
    loaded, if the restore is parallel and its post-data section allows a reader beside it (see
    the module's docstring); not called otherwise.
    """
    env = conn.libpq_env(database)
    if options:
        env["PGOPTIONS"] = pgoptions(options)
    if no_owner and role:
        return _restore_as_owner(conn, env, archive, database, jobs, role, timeout)
    argv = [pgtools.tool("pg_restore"), "-w", "--exit-on-error", f"--jobs={max(jobs, 1)}",
            f"--dbname={database}"]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    data_items = overlap_data_items(archive, timeout) if on_data_loaded is not None and jobs > 1 else None
    if data_items is None:
        return _run_pg_restore(env, [*argv, str(archive)], timeout)
    assert on_data_loaded is not None
    return _run_watched(env, [*argv, "--verbose", str(archive)], timeout, data_items, on_data_loaded)


def _run_pg_restore(env: dict[str, str], argv: list[str], timeout: float) -> float:
    started = time.monotonic()
    with tempfile.TemporaryFile() as err, pgtools.child(
            argv, env=env, timeout=timeout,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err) as proc:
        proc.wait()
        err.seek(0)
        proc.check(err.read(), timeout)
    return time.monotonic() - started


def _run_watched(env: dict[str, str], argv: list[str], timeout: float, data_items: set[str],
                 on_data_loaded: Callable[[], None]) -> float:
    """pg_restore --verbose, its stderr read line by line: `finished item N` of the last data item
    calls on_data_loaded. All of stderr is kept for the error message (last_line picks the error)."""
    started = time.monotonic()
    left = set(data_items)
    with tempfile.TemporaryFile() as err, pgtools.child(
            argv, env=env, timeout=timeout, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE) as proc:
        assert proc.proc.stderr is not None
        for raw in proc.proc.stderr:
            err.write(raw)
            item = finished_item(raw)
            if item is not None and left:
                left.discard(item)
                if not left:
                    on_data_loaded()
        err.seek(0)
        proc.check(err.read(), timeout)
    return time.monotonic() - started


def overlap_data_items(archive: Path, timeout: float = 600) -> set[str] | None:
    """The dump ids of the archive's data section, when every entry of its post-data section may
    run beside a reader of the data (OVERLAP_POST_DATA_KINDS) and no table is partitioned; else
    None. Listed by pg_restore itself (`--section`), as it will restore them."""
    data = _toc_entries(archive, timeout, "--section=data")
    post = _toc_entries(archive, timeout, "--section=post-data")
    kinds = [_entry_kind(e) for e in post]
    if not data or any(not k.startswith(OVERLAP_POST_DATA_KINDS) or k.startswith(_PARTITIONING_KINDS)
                       for k in kinds):
        return None
    if any(not _entry_kind(e).startswith(DATA_KINDS) for e in data):
        return None
    pre = _toc_entries(archive, timeout, "--section=pre-data")
    if any(_entry_kind(e).startswith(_PARTITIONING_KINDS) for e in pre):
        return None
    return {e.split(";", 1)[0].strip() for e in data}


def _toc_entries(archive: Path, timeout: float, *options: str) -> list[str]:
    listing = pgtools.run([pgtools.tool("pg_restore"), "--list", *options, str(archive)], timeout=timeout)
    return [ln for ln in listing.splitlines() if ln and not ln.startswith(";")]


def _entry_kind(line: str) -> str:
    """`123; 0 16390 TABLE DATA public t owner` -> `TABLE DATA public t owner`."""
    parts = line.split(" ", 3)
    return parts[3] if len(parts) == 4 else ""


def _restore_as_owner(conn: PostgresConnection, env: dict[str, str], archive: Path, database: str, jobs: int,
                      role: str, timeout: float) -> float:
    """Restore without owners or GRANTs, everything created as `role`, in three passes.

    Extensions and the schemas they go into are created as the superuser we connect as (an
    untrusted extension needs it), and the schemas then given to `role`; everything else is
    created as `role`; the rows of extension configuration tables, which belong to the extension
    (so to the bootstrap superuser), are loaded last, as the superuser.
    """
    entries = _toc_entries(archive, timeout)
    first = [e for e in entries if _entry_kind(e).startswith(
        ("SCHEMA ", "EXTENSION ", "COMMENT - EXTENSION ", "COMMENT - SCHEMA "))]
    base = [pgtools.tool("pg_restore"), "-w", "--exit-on-error", f"--dbname={database}", "--no-owner",
            "--no-privileges"]
    seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="pgkeeper-toc-") as tmp:
        def listed(name: str, lines: list[str]) -> str:
            path = Path(tmp, name)
            path.write_text("\n".join(lines) + "\n")
            return str(path)

        if first:
            seconds += _run_pg_restore(env, [*base, "-L", listed("first", first), str(archive)], timeout)
        with conn.connect(database=database, autocommit=True) as c:
            for e in first:
                kind = _entry_kind(e)
                if kind.startswith("SCHEMA "):
                    c.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
                        sql.Identifier(kind.split(" ")[2]), sql.Identifier(role)))
            config = {f"{n} {r}" for n, r in c.execute(
                "SELECT n.nspname, k.relname FROM pg_extension e, unnest(e.extconfig) cfg "
                "JOIN pg_class k ON k.oid = cfg JOIN pg_namespace n ON n.oid = k.relnamespace").fetchall()}
        last = [e for e in entries if _entry_kind(e).startswith("TABLE DATA ")
                and " ".join(_entry_kind(e).split(" ")[2:4]) in config]
        rest = [e for e in entries if e not in first and e not in last]
        seconds += _run_pg_restore(env, [*base, f"--jobs={max(jobs, 1)}", f"--role={role}", "-L",
                                          listed("rest", rest), str(archive)], timeout)
        if last:
            seconds += _run_pg_restore(env, [*base, "-L", listed("last", last), str(archive)], timeout)
    return seconds


def public_revokes(archive: Path, timeout: float = 600) -> list[str]:
    """The `REVOKE ... FROM PUBLIC` statements of the archive's ACL entries, as pg_restore writes them.

    A restore without privileges would otherwise leave PUBLIC its defaults: EXECUTE on a
    SECURITY DEFINER function the backup had locked down would be open to everyone.
    """
    acl_lines = [ln for ln in _toc_entries(archive, timeout) if _entry_kind(ln).startswith("ACL ")]
    if not acl_lines:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".list") as lst:
        lst.write("\n".join(acl_lines) + "\n")
        lst.flush()
        script = pgtools.run([pgtools.tool("pg_restore"), "-L", lst.name, "-f", "-", str(archive)], timeout=timeout)
    return [ln for ln in script.splitlines() if ln.startswith("REVOKE ") and ln.endswith(" FROM PUBLIC;")]

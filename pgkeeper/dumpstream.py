"""The dump's data path without Prefect: a snapshot, pg_dump streamed through the compressor,
hashed on the way and written once, and the counts taken inside that snapshot.

The dump task (tasks/dump.py) runs it inside a Prefect run; `pgkeeper backup` may start it
before Prefect is imported (pgkeeper/early.py) and hand the result to the run. One pass over the
data: pg_dump's stdout is compressed, hashed and written to a temp file in the backup folder,
renamed only when pg_dump has exited cleanly.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from pydantic import BaseModel

from pgkeeper import codec, pgtools
from pgkeeper.dbprops import read_properties
from pgkeeper.errors import RepositoryError, UnreadableDump
from pgkeeper.manifest import DatabaseProperties, StoredFile, globals_file_name
from pgkeeper.pgdb import object_counts, table_row_counts
from pgkeeper.roles import read_globals, referenced_roles

if TYPE_CHECKING:
    from pgkeeper.connection import ConnectionVerbs
    from pgkeeper.repository import RepositoryVerbs

PROGRESS_EVERY_S = 2.0
# pg_restore --list stops reading after the table of contents (at the archive's start); past
# this much, a listing that still reads is fed no more and reports what it found.
TOC_FEED_LIMIT = 256 << 20
# pg_dump's session writes timestamptz in this zone; verify reads the restored copy the same way.
DUMP_ENV = {"PGTZ": "UTC"}


class DumpResult(BaseModel):
    file: StoredFile
    toc: dict[str, int] = {}  # pg_restore --list of the archive as it was written, by entry kind
    globals_file: StoredFile
    tables: dict[str, int]
    objects: dict[str, int]
    properties: DatabaseProperties
    roles: list[str]
    dump_settings: dict[str, str]
    started_at: datetime
    finished_at: datetime
    # What the stored bytes decompressed to while they were written (zstd with its frame checksum,
    # codec.StreamCheck); None when not checked on the way (gzip): quick-verify decompresses then.
    decompressed: int | None = None


def dump_file_name(database: str, compression: str) -> str:
    return f"{database}.dump{codec.SUFFIX[compression]}"


def stream_dump(conn: ConnectionVerbs, repo: RepositoryVerbs, backup_id: str, snapshot: str,
                on_progress: Callable[[int], None] = lambda _n: None,
                ) -> tuple[StoredFile, dict[str, int], int | None]:
    """Run pg_dump in `snapshot` and store its output compressed; (what was stored, its table of
    contents as pg_restore listed it on the way, the size its stored bytes decompressed to on the
    way: zstd only, else None)."""
    storage = repo.storage()
    name = dump_file_name(conn.database, repo.compression)
    argv = [pgtools.tool("pg_dump"), "-Fc", "-Z0", "-w", f"--snapshot={snapshot}"]
    env = {**conn.libpq_env(), **DUMP_ENV}
    # Decompressed on the way, beside the loop (codec.StreamCheck), when quick-verify can use it:
    # zstd stored as compressed (an encrypted file is checked by decrypting it afterwards).
    checked = repo.compression == "zstd" and not repo.encrypts()
    comp = codec.compressor(repo.compression, repo.level(), checksum=checked)
    check = codec.StreamCheck() if checked else None
    raw = 0
    buf = bytearray(codec.CHUNK)
    view = memoryview(buf)
    with tempfile.TemporaryFile() as err, toc_listing(f"{backup_id}/{name}") as (to_listing, listed), pgtools.child(
        argv, env=env, timeout=repo.dump_timeout_seconds,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
    ) as dump:
        try:
            with storage.write_file(backup_id, name) as out:
                last_report = time.monotonic()
                assert dump.proc.stdout is not None
                while n := dump.proc.stdout.readinto(buf):  # type: ignore[attr-defined]
                    if raw < TOC_FEED_LIMIT:
                        to_listing(view[:n])
                    raw += n
                    piece = comp.compress(view[:n])
                    if piece:
                        out.write(piece)
                        if check is not None:
                            check.feed(piece)
                    if time.monotonic() - last_report > PROGRESS_EVERY_S:
                        on_progress(raw)
                        last_report = time.monotonic()
                piece = comp.flush()
                out.write(piece)
                if check is not None:
                    check.feed(piece)
                err.seek(0)
                dump.check(err.read(), repo.dump_timeout_seconds)
        except BaseException as exc:
            if check is not None:
                with suppress(ValueError):  # this failure is the one to report
                    check.finish(raw)
            if isinstance(exc, OSError):
                raise RepositoryError(f"writing {backup_id}/{name} failed: {exc.strerror}") from None
            raise
        decompressed = stream_checked(check, raw, f"{backup_id}/{name}")
        toc = dict(listed())
    return storage.stored_file(name, out, raw), toc, decompressed


def stream_checked(check: codec.StreamCheck | None, raw: int, label: str) -> int | None:
    """The size the stored bytes decompressed to on the way (None: not checked on the way); a
    stream that did not decompress is UnreadableDump, as quick-verify would find it."""
    if check is None:
        return None
    try:
        return check.finish(raw)
    except ValueError as exc:
        raise UnreadableDump(f"{label}: {exc}") from None


def store_small_file(repo: RepositoryVerbs, backup_id: str, name: str, data: bytes) -> StoredFile:
    """Write a small file of the backup compressed like the dump, with its sha256."""
    comp = codec.compressor(repo.compression, repo.level())
    storage = repo.storage()
    with storage.write_file(backup_id, name) as out:
        out.write(comp.compress(data) + comp.flush())
    return storage.stored_file(name, out, len(data))


@contextmanager
def exported_snapshot(conn: ConnectionVerbs) -> Iterator[tuple[psycopg.Connection, str]]:
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


def toc_kinds(listing: str) -> Counter[str]:
    """Count `pg_restore --list` entries by kind ("TABLE DATA", "INDEX", ...)."""
    kinds: Counter[str] = Counter()
    for line in listing.splitlines():
        if not line or line.startswith(";"):
            continue
        # "3345; 0 16390 TABLE DATA public company postgres"
        parts = line.split(" ", 3)
        if len(parts) < 4:
            continue
        rest = parts[3]
        for kind in ("TABLE DATA", "SEQUENCE SET", "FK CONSTRAINT", "CONSTRAINT", "INDEX", "TABLE",
                     "SEQUENCE", "EXTENSION", "SCHEMA", "VIEW", "FUNCTION"):
            if rest.startswith(kind + " "):
                kinds[kind] += 1
                break
    return kinds


@contextmanager
def toc_listing(label: str) -> Iterator[tuple[Callable[[bytes], None], Callable[[], Counter[str]]]]:
    """(feed, kinds): pg_restore --list reading an archive fed in chunks. pg_restore stops
    reading once it has the table of contents; later chunks are dropped. kinds() is the count
    of TOC entries by kind once everything was fed."""
    with tempfile.TemporaryFile() as listing, tempfile.TemporaryFile() as err, pgtools.child(
        [pgtools.tool("pg_restore"), "--list"], stdin=subprocess.PIPE, stdout=listing, stderr=err,
        timeout=3600,
    ) as restore:
        assert restore.proc.stdin is not None
        stdin = restore.proc.stdin
        state = {"open": True}

        def feed(chunk: bytes) -> None:
            if state["open"]:
                try:
                    stdin.write(chunk)
                except BrokenPipeError:
                    state["open"] = False

        def kinds() -> Counter[str]:
            try:
                stdin.close()
            except BrokenPipeError:
                pass
            err.seek(0)
            try:
                restore.check(err.read())
            except pgtools.ToolFailed as exc:
                raise UnreadableDump(f"{label}: pg_restore cannot read it ({exc})") from None
            listing.seek(0)
            return toc_kinds(listing.read().decode("utf-8", "replace"))

        yield feed, kinds


def dump_in_snapshot(conn: ConnectionVerbs, repo: RepositoryVerbs, backup_id: str,
                     on_progress: Callable[[int], None] = lambda _n: None) -> DumpResult:
    """Dump the database in an exported snapshot, counting its rows in that same snapshot;
    the roles it references go to their own file (their password hashes are secrets: that file
    and nowhere else)."""
    started = datetime.now(UTC)
    counts: dict[str, object] = {}
    with exported_snapshot(conn) as (holder, snapshot):
        # Count rows while pg_dump streams: same snapshot, no extra wall time.
        def count() -> None:
            try:
                counts["tables"] = table_row_counts(holder)
                counts["objects"] = object_counts(holder)
                counts["properties"] = read_properties(holder, conn.database)
                counts["roles"] = referenced_roles(holder)
                counts["globals"] = read_globals(holder, counts["roles"])  # type: ignore[arg-type]
                counts["settings"] = dump_session_settings(holder)
            except Exception as exc:  # reported below, after the dump
                counts["error"] = exc

        counter = threading.Thread(target=count, name="row-counts", daemon=True)
        counter.start()
        try:
            stored, toc, decompressed = stream_dump(conn, repo, backup_id, snapshot, on_progress)
        except BaseException:
            holder.cancel_safe()  # stop the counting early; the dump failed anyway
            raise
        finally:
            # The holder connection must not be closed under the counting thread's feet.
            counter.join()
    if "error" in counts:
        raise counts["error"]  # type: ignore[misc]
    roles_file = store_small_file(repo, backup_id, globals_file_name(repo.compression),
                                  counts.pop("globals").to_bytes())  # type: ignore[attr-defined]
    return DumpResult(file=stored, toc=toc, globals_file=roles_file, tables=counts["tables"],  # type: ignore[arg-type]
                      objects=counts["objects"], properties=counts["properties"],  # type: ignore[arg-type]
                      roles=counts["roles"], dump_settings=counts["settings"],  # type: ignore[arg-type]
                      started_at=started, finished_at=datetime.now(UTC), decompressed=decompressed)

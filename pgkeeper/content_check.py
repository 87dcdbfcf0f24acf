"""Proving a restored database holds what the backup holds: schema, security and data, not counts.

PostgreSQL's own tools do the reading: `pg_restore -f -` writes the archive as SQL, `pg_dump`
writes the restored database as SQL, and a faithful restore makes the two texts equal. Both are
cut into their TOC entries ("-- Name: ...; Type: ...; Schema: ...") and each entry is hashed as it
streams by, so memory stays flat and a difference is named by the object it is in.

Row order is no obstacle: a freshly restored table is one COPY into an empty heap, and pg_dump
reads it back in that order (synchronized scans are off in pg_dump's session).
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pgkeeper import archive_digests, dbprops, pgdb, pgtools
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.errors import IntegrityError
from pgkeeper.manifest import DatabaseProperties

# Each TOC entry pg_dump writes starts with "--\n-- Name: x; Type: ...". In COPY data a row is one
# line with newlines escaped, so this only ever appears at an entry's start.
ENTRY = b"\n--\n-- "
_IGNORED = (b"PostgreSQL database dump",)  # the header and the closing entry: versions, \unrestrict
# A REFRESH of derived data: pg_restore writes it, pg_dump --schema-only of the copy does not.
_SKIPPED_TYPES = (b"; Type: MATERIALIZED VIEW DATA;",)
# pg_dump writes default privileges in the order of their roles' OIDs, which differ on a server
# whose roles were created in another order: compared as a set of lines.
_UNORDERED_TYPES = (b"; Type: DEFAULT ACL;",)
# Below this much table data one pg_dump reads it all: a second one's start costs more than it saves.
SPLIT_MIN_BYTES = 64 << 20


class EntryHashes:
    """Stream SQL text in; get a sha256 per TOC entry, keyed by the entry's header without its owner."""

    def __init__(self, keep_owner_in_content: bool = True) -> None:
        self.entries: dict[str, str] = {}
        self._key: bytes | None = None
        self._header = b""
        self._digest = hashlib.sha256()
        self._tail = b""
        self._owner = keep_owner_in_content
        self._lines: list[bytes] | None = None  # an entry compared as a set of lines

    def _update(self, data: bytes | memoryview) -> None:
        if self._lines is None:
            self._digest.update(data)
        else:
            self._lines.append(bytes(data))

    def feed(self, chunk: bytes) -> None:
        # Slices of a memoryview: the hash reads the chunk in place (copying each MB cost more
        # CPU than hashing it).
        data = self._tail + chunk if self._tail else chunk
        view = memoryview(data)
        pos = 0
        while True:
            i = data.find(ENTRY, pos)
            if i < 0:
                cut = max(pos, len(data) - (len(ENTRY) - 1))  # a separator may straddle two chunks
                self._update(view[pos:cut])
                self._tail = bytes(view[cut:])
                return
            j = data.find(b"\n", i + len(ENTRY))
            if j < 0:
                self._update(view[pos:i])
                self._tail = bytes(view[i:])
                return
            self._update(view[pos:i + 1])
            self._next(bytes(view[i + len(ENTRY):j]))
            pos = j + 1

    def finish(self) -> dict[str, str]:
        self._update(self._tail)
        self._tail = b""
        self._next(None)
        return self.entries

    def _next(self, header: bytes | None) -> None:
        if self._lines is not None:
            self._digest.update(b"\n".join(sorted(b"".join(self._lines).splitlines())))
            self._lines = None
        if self._key is not None and not self._key.startswith(_IGNORED) \
                and not any(t in self._key + b";" for t in _SKIPPED_TYPES):
            key = self._key.decode("utf-8", "replace")
            self.entries[key] = self._digest.hexdigest()
        self._digest = hashlib.sha256()
        if header is None:
            self._key = None
            return
        name, sep, owner = header.partition(b"; Owner: ")
        self._key = name
        if any(t in name + b";" for t in _UNORDERED_TYPES):
            self._lines = []
        if self._owner and sep:
            self._digest.update(b"owner " + owner + b"\n")


# Told about each pg_dump a reading starts, so that it can be stopped from another thread.
OnChild = Callable[[pgtools.Child], None]


def _hash_tool_output(argv: Sequence[str], env: dict[str, str], hashes: EntryHashes, timeout: float,
                      on_child: OnChild | None = None) -> None:
    with pgtools.child(argv, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        if on_child is not None:
            on_child(proc)
        err: list[bytes] = []
        drain = threading.Thread(target=lambda: err.append(proc.proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        drain.start()
        assert proc.proc.stdout is not None
        while chunk := proc.proc.stdout.read(1 << 20):
            hashes.feed(chunk)
        drain.join()
        proc.check(b"".join(err), timeout)
    hashes.finish()


def archive_entries(archive: Path, section: str, owners: bool = True, timeout: float = 6 * 3600) -> dict[str, str]:
    """Entry hashes of the archive's schema (section 'schema') or data ('data') as pg_restore writes it."""
    argv = [pgtools.tool("pg_restore"), f"--{section}-only", "-f", "-"]
    if not owners:
        argv += ["--no-owner", "--no-privileges"]
    hashes = EntryHashes(keep_owner_in_content=owners)
    _hash_tool_output([*argv, str(archive)], {}, hashes, timeout)
    return hashes.entries


def database_entries(conn: PostgresConnection, database: str, section: str, settings: dict[str, str],
                     owners: bool = True, timeout: float = 6 * 3600, extra: Sequence[str] = (),
                     on_child: OnChild | None = None) -> dict[str, str]:
    """Entry hashes of `database` as pg_dump writes it, in a session formatting values as the
    backup's pg_dump did (`settings`: TimeZone, bytea_output, ...). `extra`: more pg_dump options."""
    argv = [pgtools.tool("pg_dump"), "-w", f"--{section}-only", *extra]
    if not owners:
        argv += ["--no-owner", "--no-privileges"]
    env = conn.libpq_env(database)
    if settings.get("TimeZone"):
        env["PGTZ"] = settings["TimeZone"]
    options = [f"-c {k}={_escape(v)}" for k, v in settings.items() if k != "TimeZone"]
    if options:
        env["PGOPTIONS"] = " ".join(options)
    hashes = EntryHashes(keep_owner_in_content=owners)
    _hash_tool_output(argv, env, hashes, timeout, on_child)
    return hashes.entries


def heavy_tables(conn: PostgresConnection, database: str) -> list[str]:
    """The largest tables of `database`, as pg_dump patterns, that together hold about half its
    table data: a second data dump takes them. Empty when splitting would not pay (a small
    database, or one table holding nearly everything)."""
    with conn.connect(database=database, autocommit=True) as c:
        # pg_table_size takes ACCESS SHARE, which may wait for a post-data statement still running
        # (DataReading): as pg_dump does, no timeout of the database's or role's ends that wait.
        c.execute("SET lock_timeout = 0; SET statement_timeout = 0")
        rows = c.execute(
            "SELECT n.nspname, c.relname, pg_catalog.pg_table_size(c.oid) FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'"
            " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass"
            " AND d.objid = c.oid AND d.deptype = 'e')"  # an extension's tables: pg_dump decides, as before
            " ORDER BY 3 DESC, 1, 2").fetchall()
    total = sum(size for _, _, size in rows)
    heavy, taken = [], 0
    for schema, table, size in rows:
        if taken * 2 >= total:
            break
        heavy.append(_pattern(schema, table))
        taken += size
    if total < SPLIT_MIN_BYTES or (total - taken) * 10 < total:
        return []
    return heavy


def _pattern(schema: str, table: str) -> str:
    """An exact pg_dump pattern: inside double quotes nothing is a wildcard, `"` is doubled."""
    return '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))


def database_data_entries(conn: PostgresConnection, database: str, settings: dict[str, str], owners: bool = True,
                          timeout: float = 6 * 3600, on_child: OnChild | None = None) -> dict[str, str]:
    """database_entries(..., "data", ...), read by two pg_dump sessions side by side when the
    database is large: one takes the heaviest tables (`--table`), the other everything else
    (`--exclude-table-data` of those). The same entries come out, hashed the same way; an entry
    both write (the sequences a heavy table owns) must hash alike in both."""
    heavy = heavy_tables(conn, database)
    if not heavy:
        return database_entries(conn, database, "data", settings, owners, timeout, on_child=on_child)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="data-entries") as pool:
        split = pool.submit(database_entries, conn, database, "data", settings, owners, timeout,
                            [f"--table={p}" for p in heavy], on_child)
        entries = database_entries(conn, database, "data", settings, owners, timeout,
                                   [f"--exclude-table-data={p}" for p in heavy], on_child)
        for key, digest in split.result().items():
            entries[key] = digest if entries.get(key, digest) == digest else "differs between two reads"
    return entries


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def entry_differences(expected: dict[str, str], actual: dict[str, str], what: str) -> list[str]:
    """One line per entry that differs, is missing or is unexpected, named as pg_dump names it."""
    out = []
    for key in sorted(set(expected) | set(actual)):
        e, a = expected.get(key), actual.get(key)
        if e == a:
            continue
        label = key.removeprefix("Data for Name: ").removeprefix("Name: ")
        if a is None:
            out.append(f"{what} {label}: missing from the restored database")
        elif e is None:
            out.append(f"{what} {label}: not in the backup")
        else:
            out.append(f"{what} {label}: differs from the backup")
    return out


class ArchiveReading:
    """Reads the archive's schema and data entries in a background thread, so it overlaps the
    restore that is going on meanwhile (they need only the archive file).

    `kept`: the stored dump this archive was decompressed from, once its checksum is proven: the
    entries kept for it on this host are used instead of reading the archive again, and a
    complete read is kept for the next time (archive_digests.py)."""

    def __init__(self, archive: Path, owners: bool = True, kept: str | None = None) -> None:
        self.schema: dict[str, str] = {}
        self.data: dict[str, str] = {}
        self.error: BaseException | None = None
        self.key = archive_digests.DigestKey(kept, owners) if kept else None
        found = archive_digests.load(self.key) if self.key else None
        self.reused = found is not None
        self._thread: threading.Thread | None = None
        if found is not None:
            self.schema, self.data = found
            return
        self._thread = threading.Thread(target=self._run, args=(archive, owners), name="archive-hashes", daemon=True)
        self._thread.start()

    def _run(self, archive: Path, owners: bool) -> None:
        try:
            self.schema = archive_entries(archive, "schema", owners)
            self.data = archive_entries(archive, "data", owners)
        except BaseException as exc:  # handed to the caller by result()
            self.error = exc
            return
        if self.key is not None:
            archive_digests.save(self.key, self.schema, self.data)

    def result(self) -> tuple[dict[str, str], dict[str, str]]:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise IntegrityError(f"the archive could not be read back as SQL: {self.error}")
        return self.schema, self.data


class DataReading:
    """The database's data entries (database_data_entries), read in a background thread once
    start() is called: a restore starts it as soon as its data section is loaded, so that the
    read runs beside the index and constraint builds of the post-data section (see
    pgrestore.py for when that is safe). Not started, prove_content reads the data itself,
    after the restore, as it always did."""

    def __init__(self, conn: PostgresConnection, database: str, settings: dict[str, str],
                 owners: bool = True) -> None:
        self._args = (conn, database, settings, owners)
        self._entries: dict[str, str] = {}
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._children: list[pgtools.Child] = []
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._run, name="shadow-data-entries", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._entries = database_data_entries(*self._args, on_child=self._register)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def _register(self, child: pgtools.Child) -> None:
        with self._lock:
            self._children.append(child)
            if self._stopped:
                child.kill()

    def result(self) -> dict[str, str]:
        """The entries; raises what the read raised (as an unstarted proof's own read would)."""
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._entries

    def stop(self) -> None:
        """Stop a read whose result nobody will use (the restore failed): its pg_dumps are killed
        and waited for, so none is left connected to a database about to be dropped."""
        with self._lock:
            self._stopped = True
            for child in self._children:
                child.kill()
        if self._thread is not None:
            self._thread.join()


def prove_content(conn: PostgresConnection, database: str, archive: Path, props: DatabaseProperties | None,
                  settings: dict[str, str], owners: bool = True, reading: ArchiveReading | None = None,
                  data_reading: DataReading | None = None) -> list[str]:
    """Every difference between `database` and the backup `archive`: schema and grants, data, and
    the database's own properties. Empty means the restore gave back what was there.

    Data is compared only when the manifest says how pg_dump's session formatted values (backups
    made before it did are compared by schema and counts). `data_reading`: the database's data
    side, when a started DataReading already reads it."""
    reading = reading or ArchiveReading(archive, owners)
    # The schema dump runs beside the data dump: two read-only pg_dump sessions, and the schema
    # one is short, so it costs no wall time (it used to run first, on its own).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="schema-entries") as pool:
        schema_future = pool.submit(database_entries, conn, database, "schema", settings, owners)
        if not settings:
            data = None
        elif data_reading is not None and data_reading.started:
            data = data_reading.result()
        else:
            data = database_data_entries(conn, database, settings, owners)
        schema = schema_future.result()
    want_schema, want_data = reading.result()
    diffs = entry_differences(want_schema, schema, "schema of")
    if data is not None:
        diffs += entry_differences(want_data, data, "data of")
    if props is not None:
        with pgdb.admin_connection(conn) as c:
            diffs += dbprops.differences(props, dbprops.read_properties(c, database))
    return diffs

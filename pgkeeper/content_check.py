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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pgkeeper import dbprops, pgdb, pgtools
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

    def _update(self, data: bytes) -> None:
        if self._lines is None:
            self._digest.update(data)
        else:
            self._lines.append(data)

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        pos = 0
        while True:
            i = data.find(ENTRY, pos)
            if i < 0:
                cut = max(pos, len(data) - (len(ENTRY) - 1))  # a separator may straddle two chunks
                self._update(data[pos:cut])
                self._tail = data[cut:]
                return
            j = data.find(b"\n", i + len(ENTRY))
            if j < 0:
                self._update(data[pos:i])
                self._tail = data[i:]
                return
            self._update(data[pos:i + 1])
            self._next(data[i + len(ENTRY):j])
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


def _hash_tool_output(argv: Sequence[str], env: dict[str, str], hashes: EntryHashes, timeout: float) -> None:
    with pgtools.child(argv, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
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
                     owners: bool = True, timeout: float = 6 * 3600) -> dict[str, str]:
    """Entry hashes of `database` as pg_dump writes it, in a session formatting values as the
    backup's pg_dump did (`settings`: TimeZone, bytea_output, ...)."""
    argv = [pgtools.tool("pg_dump"), "-w", f"--{section}-only"]
    if not owners:
        argv += ["--no-owner", "--no-privileges"]
    env = conn.libpq_env(database)
    if settings.get("TimeZone"):
        env["PGTZ"] = settings["TimeZone"]
    options = [f"-c {k}={_escape(v)}" for k, v in settings.items() if k != "TimeZone"]
    if options:
        env["PGOPTIONS"] = " ".join(options)
    hashes = EntryHashes(keep_owner_in_content=owners)
    _hash_tool_output(argv, env, hashes, timeout)
    return hashes.entries


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
    restore that is going on meanwhile (they need only the archive file)."""

    def __init__(self, archive: Path, owners: bool = True) -> None:
        self.schema: dict[str, str] = {}
        self.data: dict[str, str] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(archive, owners), name="archive-hashes", daemon=True)
        self._thread.start()

    def _run(self, archive: Path, owners: bool) -> None:
        try:
            self.schema = archive_entries(archive, "schema", owners)
            self.data = archive_entries(archive, "data", owners)
        except BaseException as exc:  # handed to the caller by result()
            self.error = exc

    def result(self) -> tuple[dict[str, str], dict[str, str]]:
        self._thread.join()
        if self.error is not None:
            raise IntegrityError(f"the archive could not be read back as SQL: {self.error}")
        return self.schema, self.data


def prove_content(conn: PostgresConnection, database: str, archive: Path, props: DatabaseProperties | None,
                  settings: dict[str, str], owners: bool = True, reading: ArchiveReading | None = None) -> list[str]:
    """Every difference between `database` and the backup `archive`: schema and grants, data, and
    the database's own properties. Empty means the restore gave back what was there.

    Data is compared only when the manifest says how pg_dump's session formatted values (backups
    made before it did are compared by schema and counts)."""
    reading = reading or ArchiveReading(archive, owners)
    # The schema dump runs beside the data dump: two read-only pg_dump sessions, and the schema
    # one is short, so it costs no wall time (it used to run first, on its own).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="schema-entries") as pool:
        schema_future = pool.submit(database_entries, conn, database, "schema", settings, owners)
        data = database_entries(conn, database, "data", settings, owners) if settings else None
        schema = schema_future.result()
    want_schema, want_data = reading.result()
    diffs = entry_differences(want_schema, schema, "schema of")
    if data is not None:
        diffs += entry_differences(want_data, data, "data of")
    if props is not None:
        with pgdb.admin_connection(conn) as c:
            diffs += dbprops.differences(props, dbprops.read_properties(c, database))
    return diffs

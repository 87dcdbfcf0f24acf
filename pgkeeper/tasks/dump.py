"""Dump: pg_dump -Fc -Z0 streamed through the compressor, hashed on the way, written once.

One pass over the data: pg_dump's stdout is compressed, hashed and written to a temp file in
the backup folder, renamed only when pg_dump has exited cleanly.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper import codec, pgtools
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.dbprops import read_properties
from pgkeeper.errors import RepositoryError
from pgkeeper.fmt import human_bytes
from pgkeeper.manifest import DatabaseProperties, StoredFile, globals_file_name
from pgkeeper.roles import read_globals, referenced_roles
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tasks.snapshot import dump_session_settings, exported_snapshot, object_counts, table_row_counts
from pgkeeper.tasks.verify import toc_listing

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


def dump_file_name(database: str, compression: str) -> str:
    return f"{database}.dump{codec.SUFFIX[compression]}"


def stream_dump(conn: PostgresConnection, repo: BackupRepository, backup_id: str, snapshot: str,
                on_progress: Callable[[int], None] = lambda _n: None) -> tuple[StoredFile, dict[str, int]]:
    """Run pg_dump in `snapshot` and store its output compressed; (what was stored, its table of
    contents as pg_restore listed it on the way, for a host that cannot decrypt what it wrote)."""
    storage = repo.storage()
    name = dump_file_name(conn.database, repo.compression)
    argv = [pgtools.tool("pg_dump"), "-Fc", "-Z0", "-w", f"--snapshot={snapshot}"]
    env = {**conn.libpq_env(), **DUMP_ENV}
    comp = codec.compressor(repo.compression, repo.level())
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
                    if time.monotonic() - last_report > PROGRESS_EVERY_S:
                        on_progress(raw)
                        last_report = time.monotonic()
                out.write(comp.flush())
                err.seek(0)
                dump.check(err.read(), repo.dump_timeout_seconds)
        except OSError as exc:
            raise RepositoryError(f"writing {backup_id}/{name} failed: {exc.strerror}") from None
        toc = dict(listed())
    return storage.stored_file(name, out, raw), toc


def store_small_file(repo: BackupRepository, backup_id: str, name: str, data: bytes) -> StoredFile:
    """Write a small file of the backup compressed like the dump, with its sha256."""
    comp = codec.compressor(repo.compression, repo.level())
    storage = repo.storage()
    with storage.write_file(backup_id, name) as out:
        out.write(comp.compress(data) + comp.flush())
    return storage.stored_file(name, out, len(data))


def _artifact_key(database: str) -> str:
    return "backup-progress-" + re.sub(r"[^a-z0-9-]+", "-", database.lower()).strip("-")


@task(name="dump", cache_policy=NO_CACHE, **RETRYABLE)
def dump_database(conn: PostgresConnection, repo: BackupRepository, backup_id: str,
                  estimated_raw_bytes: int) -> DumpResult:
    """Dump the database in an exported snapshot, counting its rows in that same snapshot."""
    logger = get_run_logger()
    started = datetime.now(UTC)
    progress_id = create_progress_artifact(0.0, key=_artifact_key(conn.database),
                                           description=f"pg_dump of {conn.database} ({backup_id})")

    def report(raw: int) -> None:
        pct = min(99.0, 100.0 * raw / max(estimated_raw_bytes, 1))
        update_progress_artifact(progress_id, pct)
        logger.info("dumped %s (about %.0f%%)", human_bytes(raw), pct)

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
            stored, toc = stream_dump(conn, repo, backup_id, snapshot, report)
        except BaseException:
            holder.cancel_safe()  # stop the counting early; the dump failed anyway
            raise
        finally:
            # The holder connection must not be closed under the counting thread's feet.
            counter.join()
    if "error" in counts:
        raise counts["error"]  # type: ignore[misc]
    # Role password hashes are secrets: they go into this file and nowhere else (not the result).
    roles_file = store_small_file(repo, backup_id, globals_file_name(repo.compression),
                                  counts.pop("globals").to_bytes())  # type: ignore[attr-defined]
    update_progress_artifact(progress_id, 100.0)
    logger.info("stored %s as %s (%s, sha256 %s)", conn.database, stored.name,
                human_bytes(stored.size), stored.sha256[:16])
    return DumpResult(file=stored, toc=toc, globals_file=roles_file, tables=counts["tables"],  # type: ignore[arg-type]
                      objects=counts["objects"], properties=counts["properties"],  # type: ignore[arg-type]
                      roles=counts["roles"], dump_settings=counts["settings"],  # type: ignore[arg-type]
                      started_at=started, finished_at=datetime.now(UTC))

"""A streamed base backup without Prefect: what the cluster is (and the checks that refuse to
start), and `pg_basebackup -D -` through the compressor into the repository with every file
checked against backup_manifest on the way. The base-backup flow's steps (tasks/basebackup.py)
run these in a run; `pgkeeper base-backup`'s early start (pgkeeper/early_base.py) runs them
before Prefect is imported."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from pgkeeper import codec
from pgkeeper.basebackup_tool import Started, label_of, started_pg_basebackup
from pgkeeper.errors import ArchivingOff, IntegrityError, RepositoryError
from pgkeeper.fmt import human_bytes
from pgkeeper.manifest import StoredFile
from pgkeeper.tarstream import TarChecker, check_against_manifest
from pgkeeper.tls import plaintext_warning
from pgkeeper.wal.identity import check_backup, check_remote

if TYPE_CHECKING:
    from pgkeeper.connection import ConnectionVerbs
    from pgkeeper.repository import RepositoryVerbs

PG_MANIFEST = "backup_manifest"
READ_CHUNK = 1 << 20
COMPRESS_THREADS = 2  # zstd's own threads: compression keeps pace with the walsender on 2 cores

Alert = Callable[..., None]  # (kind, message, database=..., **details): alerts.warn in a run


class ClusterInfo(BaseModel):
    server_version: str
    system_identifier: str
    wal_segment_size: int
    cluster_size: int
    timeline: int
    server_time: datetime | None = None  # the server's clock, to check ours against (pgkeeper.clock)
    tables: dict[str, int] = {}  # the connected database's tables -> reltuples, for the PITR drill's row check
    tablespaces: int = 0  # besides pg_default and pg_global: pg_basebackup cannot stream those to stdout
    archive_command: str = ""


class BaseBackupFiles(BaseModel):
    files: list[StoredFile]
    start_lsn: str
    stop_lsn: str
    timeline: int
    started_at: datetime
    finished_at: datetime
    streamed_check: int = 0  # files checked against backup_manifest while streaming (0: staged)
    raw_size: int = 0  # bytes of the tar as pg_basebackup wrote it (streamed)


def table_estimates(c: Any) -> dict[str, int]:
    """schema.table -> reltuples (-1: never analysed) in the connection's database."""
    rows = c.execute(
        "SELECT n.nspname || '.' || c.relname, c.reltuples::bigint FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
    ).fetchall()
    return {name: int(n) for name, n in rows}


def cluster_facts(conn: ConnectionVerbs, repo: RepositoryVerbs, alert: Alert) -> ClusterInfo:
    """Server reachable and archiving WAL; repository writable, of this cluster, with room for the
    whole cluster. A plaintext connection to another machine goes to `alert` as it is found."""
    with conn.connect() as c:
        # One round trip for the settings and the cluster's identity (the step is on every backup's path).
        (mode, command, library, version, sysid, seg, size, tli, server_time,
         tablespaces) = c.execute(  # type: ignore[misc]
            "SELECT current_setting('archive_mode'), current_setting('archive_command'), "
            "current_setting('archive_library'), current_setting('server_version'), "
            "(SELECT system_identifier FROM pg_control_system())::text, "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
            "(SELECT sum(pg_database_size(oid)) FROM pg_database)::bigint, "
            "(SELECT timeline_id FROM pg_control_checkpoint()), clock_timestamp(), "
            "(SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))").fetchone()
        if mode == "off" or not (command or library):
            raise ArchivingOff(f"WAL archiving is off on {conn.describe()}: run `pgkeeper wal-setup --apply` "
                               "and restart PostgreSQL (a base backup without archived WAL cannot be restored)")
        plaintext = plaintext_warning(conn.host, conn.port, conn.sslmode, c)
        tables = table_estimates(c)
    if plaintext:  # another machine, no TLS: the whole cluster is about to cross the network in clear
        alert("plaintext-connection", plaintext, database=conn.database, host=conn.host, port=conn.port)
    storage = repo.storage()
    storage.ensure_writable()
    # The repository belongs to one cluster (wal/identity.py): the first base backup claims it.
    archive = check_backup(repo.wal_spool(), sysid, version, int(seg), f"a base backup of {conn.describe()}",
                           claim=True)
    target = repo.s3_target()
    if target is not None and archive is not None:
        from pgkeeper.wal.s3 import S3WalStore

        check_remote(archive, S3WalStore(target))
    room = storage.free_space()
    if room is not None and size > room[0]:
        raise RepositoryError(f"not enough space in {storage.describe()}: the cluster is {human_bytes(size)}, "
                              f"{human_bytes(room[0])} free")
    return ClusterInfo(server_version=version, system_identifier=sysid, wal_segment_size=int(seg),
                       cluster_size=int(size), timeline=int(tli), server_time=server_time,
                       tables=tables, tablespaces=int(tablespaces), archive_command=command or library)


def wal_range_of(data: dict, label: str) -> tuple[str, str, int]:
    """(start LSN, stop LSN, timeline) from PostgreSQL's backup_manifest, parsed."""
    ranges = data.get("WAL-Ranges") or []
    if not ranges:
        raise IntegrityError(f"{label} has no WAL-Ranges")
    return ranges[0]["Start-LSN"], ranges[-1]["End-LSN"], int(ranges[-1]["Timeline"])


def stream_into(conn: ConnectionVerbs, repo: RepositoryVerbs, backup_id: str,
                started: Started | None = None) -> BaseBackupFiles:
    """pg_basebackup -Ft -D - -X none --checkpoint=fast straight into the repository: compressed
    here on threads, every file checked against backup_manifest on the way (no staging copy).
    `started`: the tool already started (the early start's child), else it is started here."""
    if started is None:
        with started_pg_basebackup(conn, repo, label_of(backup_id)) as started:
            return stream_into(conn, repo, backup_id, started)
    pb, err, started_at = started
    storage = repo.storage()
    name = f"base.tar{codec.SUFFIX[repo.compression]}"
    comp = codec.compressor(repo.compression, repo.level(), threads=COMPRESS_THREADS)
    checker = TarChecker()
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    try:
        with storage.write_file(backup_id, name) as out:
            assert pb.proc.stdout is not None
            while n := pb.proc.stdout.readinto(buf):  # type: ignore[attr-defined]
                for part in checker.feed(view[:n]):
                    piece = comp.compress(part)  # type: ignore[arg-type]
                    if piece:
                        out.write(piece)
            out.write(comp.flush())
            err.seek(0)
            pb.check(err.read(), repo.dump_timeout_seconds)
            # Inside the write: a stream that does not match its manifest is never stored.
            checked = check_against_manifest(checker)
    except OSError as exc:
        raise RepositoryError(f"writing {backup_id}/{name} failed: {exc.strerror or exc}") from None
    finished = datetime.now(UTC)  # the archive holds the WAL up to the stop position from here on
    tar = storage.stored_file(name, out, checker.raw_size)
    with storage.write_file(backup_id, PG_MANIFEST) as mout:
        mout.write(bytes(checker.manifest))
    files = [storage.stored_file(PG_MANIFEST, mout), tar]
    start_lsn, stop_lsn, timeline = wal_range_of(json.loads(bytes(checker.manifest)), PG_MANIFEST)
    return BaseBackupFiles(files=files, start_lsn=start_lsn, stop_lsn=stop_lsn, timeline=timeline,
                           started_at=started_at, finished_at=finished, streamed_check=checked,
                           raw_size=checker.raw_size)

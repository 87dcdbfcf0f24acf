"""Physical base backups: pg_basebackup (tar, compressed, -X none), stored, proven restorable.

WAL is not inside the backup (-X none): pg_basebackup then waits until the server has
archived the WAL up to the backup's stop position, so once it returns the archive holds
everything needed to make the backup consistent. check_wal_archived() proves it, and
verify_base_backup() runs pg_verifybackup on an unpacked copy with that WAL (PG 15's
pg_verifybackup reads plain directories only, so the tar files are unpacked first).
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import zstandard
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper import __version__, pgtools
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.errors import ArchivingOff, IntegrityError, PgkeeperError, RepositoryError
from pgkeeper.fmt import human_bytes
from pgkeeper.manifest import Manifest, StoredFile, Verification
from pgkeeper.names import backup_id_server
from pgkeeper.storage.interface import Storage
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tls import plaintext_warning
from pgkeeper.wal.archive import WalArchive, segments_between
from pgkeeper.wal.config import WalConfig
from pgkeeper.wal.identity import check_backup, check_remote

STAGING = ".pg_basebackup"
PG_MANIFEST = "backup_manifest"
READ_CHUNK = 1 << 20


class ClusterInfo(BaseModel):
    server_version: str
    system_identifier: str
    wal_segment_size: int
    cluster_size: int
    timeline: int
    server_time: datetime | None = None  # the server's clock, to check ours against (pgkeeper.clock)
    tables: dict[str, int] = {}  # the connected database's tables -> reltuples, for the PITR drill's row check


class BaseBackupFiles(BaseModel):
    files: list[StoredFile]
    start_lsn: str
    stop_lsn: str
    timeline: int
    started_at: datetime
    finished_at: datetime


def table_estimates(conn: PostgresConnection) -> dict[str, int]:
    """schema.table -> reltuples (-1: never analysed) in the connection's database."""
    with conn.connect() as c:
        rows = c.execute(
            "SELECT n.nspname || '.' || c.relname, c.reltuples::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
        ).fetchall()
    return {name: int(n) for name, n in rows}


@task(name="physical-preflight", cache_policy=NO_CACHE, **RETRYABLE)
def physical_preflight(conn: PostgresConnection, repo: BackupRepository) -> ClusterInfo:
    """Server reachable and archiving WAL; repository writable with room for the whole cluster."""
    with conn.connect() as c:
        mode = c.execute("SELECT current_setting('archive_mode')").fetchone()[0]  # type: ignore[index]
        command = c.execute("SELECT current_setting('archive_command')").fetchone()[0]  # type: ignore[index]
        library = c.execute("SELECT current_setting('archive_library')").fetchone()[0]  # type: ignore[index]
        if mode == "off" or not (command or library):
            raise ArchivingOff(f"WAL archiving is off on {conn.describe()}: run `pgkeeper wal-setup --apply` "
                               "and restart PostgreSQL (a base backup without archived WAL cannot be restored)")
        version = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        sysid, seg, size, tli = c.execute(
            "SELECT (SELECT system_identifier FROM pg_control_system())::text, "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
            "(SELECT sum(pg_database_size(oid)) FROM pg_database)::bigint, "
            "(SELECT timeline_id FROM pg_control_checkpoint())").fetchone()  # type: ignore[misc]
        server_time = c.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        plaintext = plaintext_warning(conn.host, conn.port, conn.sslmode, c)
    if plaintext:  # another machine, no TLS: the whole cluster is about to cross the network in clear
        from pgkeeper.alerts import warn

        warn("plaintext-connection", plaintext, database=conn.database, host=conn.host, port=conn.port)
    tables = table_estimates(conn)
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
    get_run_logger().info("server %s, PostgreSQL %s, cluster %s, archive_command %r", conn.describe(), version,
                          human_bytes(size), command)
    return ClusterInfo(server_version=version, system_identifier=sysid, wal_segment_size=int(seg),
                       cluster_size=int(size), timeline=int(tli), server_time=server_time,
                       tables=tables)


def _compress_option(repo: BackupRepository) -> str:
    # Server-side: the walsender compresses, the network and this host carry a third of the bytes.
    return f"server-{'zstd' if repo.compression == 'zstd' else 'gzip'}:{repo.level()}"


def wal_range(pg_manifest: Path) -> tuple[str, str, int]:
    """(start LSN, stop LSN, timeline) from PostgreSQL's backup_manifest."""
    data = json.loads(pg_manifest.read_text())
    ranges = data.get("WAL-Ranges") or []
    if not ranges:
        raise IntegrityError(f"{pg_manifest} has no WAL-Ranges")
    return ranges[0]["Start-LSN"], ranges[-1]["End-LSN"], int(ranges[-1]["Timeline"])


@task(name="pg-basebackup", cache_policy=NO_CACHE, **RETRYABLE)
def take_base_backup(conn: PostgresConnection, repo: BackupRepository, backup_id: str) -> BaseBackupFiles:
    """pg_basebackup -Ft -X none --checkpoint=fast, compressed, into scratch; then stored."""
    logger = get_run_logger()
    storage = repo.storage()
    with storage.scratch("basebackup") as scratch:  # a retried attempt starts clean
        staging = scratch / STAGING
        argv = [pgtools.tool("pg_basebackup"), "-D", str(staging), "-Ft", "-X", "none", "--checkpoint=fast",
                f"--compress={_compress_option(repo)}", "--manifest-checksums=SHA256", "-l",
                f"pgkeeper {backup_id}", "-w"]
        started = datetime.now(UTC)
        pgtools.run(argv, env=conn.libpq_env(), timeout=repo.dump_timeout_seconds)
        finished = datetime.now(UTC)  # the archive holds the WAL up to the stop position from here on
        start_lsn, stop_lsn, timeline = wal_range(staging / PG_MANIFEST)
        files = [storage.store_file(path, backup_id, path.name) for path in sorted(staging.iterdir())]
    logger.info("pg_basebackup: %s in %d files, WAL %s..%s on timeline %d", human_bytes(sum(f.size for f in files)),
                len(files), start_lsn, stop_lsn, timeline)
    return BaseBackupFiles(files=files, start_lsn=start_lsn, stop_lsn=stop_lsn, timeline=timeline,
                           started_at=started, finished_at=finished)


@task(name="check-wal-archived", cache_policy=NO_CACHE, **RETRYABLE)
def check_wal_archived(walcfg: WalConfig, start_lsn: str, stop_lsn: str, timeline: int,
                       segment_size: int, wait_seconds: float = 60) -> list[str]:
    """Every segment from the start to the stop position is in the archive (waits a little)."""
    archive = WalArchive(walcfg)
    needed = segments_between(start_lsn, stop_lsn, timeline, segment_size)
    deadline = time.monotonic() + wait_seconds
    missing = needed
    while True:
        missing = [s for s in missing if not archive.has(s)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if missing:
        raise IntegrityError(f"WAL segment {missing[0]} needed by the base backup is not in {archive.describe()}: "
                             "check archive_command and pg_stat_archiver", transient=True)
    get_run_logger().info("WAL %s..%s (%d segment(s)) is archived in %s", needed[0], needed[-1], len(needed),
                          archive.describe())
    return needed


def _member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # Tablespace links point at the source host's directories: tablespaces are unpacked in place
    # (pg_tblspc/<oid>/) instead. Everything else must stay inside `dest`.
    if member.name.startswith("pg_tblspc/") and member.issym():
        return None
    return tarfile.tar_filter(member, dest)


def unpack_backup(open_plain: Callable[[StoredFile], BinaryIO], files: list[StoredFile], dest: Path) -> None:
    """Unpack base.tar.* (and tablespace tars) into `dest`, each checked against its sha256.

    A mismatch raises IntegrityError after the fact: the caller must discard `dest`.
    """
    tars = sorted((f for f in files if ".tar" in f.name), key=lambda f: not f.name.startswith("base."))
    if not tars or not tars[0].name.startswith("base."):
        raise IntegrityError("the backup has no base.tar file")
    for f in tars:
        target = dest if f.name.startswith("base.") else dest / "pg_tblspc" / f.name.split(".")[0]
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open_plain(f) as hashed:
            if f.name.endswith(".zst"):
                stream = zstandard.ZstdDecompressor().stream_reader(hashed, read_across_frames=True)
            elif f.name.endswith(".gz"):
                import gzip

                stream = gzip.GzipFile(fileobj=hashed)  # type: ignore[arg-type]
            else:
                stream = hashed  # type: ignore[assignment]
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[call-overload]
                    tf.extractall(target, filter=_member_filter)
                while hashed.read(READ_CHUNK):  # to the end, where the stored bytes are checked
                    pass
            except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
                raise IntegrityError(f"{f.name} cannot be unpacked: {exc}") from None


def copy_checked(storage: Storage, backup_id: str, file: StoredFile, dest: Path) -> None:
    """One stored file to a local path, proven to be the manifest's bytes."""
    with storage.open_plain(backup_id, file) as reader, open(dest, "wb") as out:
        shutil.copyfileobj(reader, out, READ_CHUNK)


def fetch_segments(archive: WalArchive, names: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        raw = archive.fetch(name)
        if raw is None:
            raise IntegrityError(f"WAL segment {name} is not in {archive.describe()}")
        (dest / name).write_bytes(raw)


@task(name="verify-base-backup", cache_policy=NO_CACHE)
def verify_base_backup(repo: BackupRepository, backup_id: str, backup: BaseBackupFiles, walcfg: WalConfig,
                       segments: list[str]) -> dict[str, str]:
    """Unpack a scratch copy and run pg_verifybackup on it with the archived WAL."""
    storage = repo.storage()
    [pg_manifest] = [f for f in backup.files if f.name == PG_MANIFEST]
    try:
        with storage.scratch("verify-base") as scratch:
            unpack_backup(lambda f: storage.open_plain(backup_id, f), backup.files, scratch / "data")
            copy_checked(storage, backup_id, pg_manifest, scratch / PG_MANIFEST)
            fetch_segments(WalArchive(walcfg), segments, scratch / "wal")
            out = pgtools.run([pgtools.tool("pg_verifybackup"), "-q", "-m", str(scratch / PG_MANIFEST),
                               "-w", str(scratch / "wal"), str(scratch / "data")], timeout=repo.dump_timeout_seconds)
    except PgkeeperError as exc:
        raise IntegrityError(f"base backup {backup_id} failed verification: {exc}") from None
    get_run_logger().info("pg_verifybackup: backup %s and its WAL verified %s", backup_id, out.strip())
    return {"checksums": "PASS: every file matches sha256 in the manifest",
            "pg_verifybackup": f"PASS: files and WAL {segments[0]}..{segments[-1]} verified"}


@task(name="write-physical-manifest", cache_policy=NO_CACHE)
def write_physical_manifest(repo: BackupRepository, backup_id: str, database: str, info: ClusterInfo,
                            backup: BaseBackupFiles, checks: dict[str, str], labels: list[str],
                            host_port: tuple[str | None, int | None] = (None, None)) -> Manifest:
    """Write manifest.json last: from this moment the base backup exists and pitr may use it."""
    size = sum(f.size for f in backup.files)
    manifest = Manifest(
        backup_id=backup_id, kind="physical", database=database, server_version=info.server_version,
        system_identifier=info.system_identifier, tool_version=f"pgkeeper {__version__}",
        server=backup_id_server(backup_id), host=host_port[0], port=host_port[1],
        started_at=backup.started_at, finished_at=backup.finished_at, start_lsn=backup.start_lsn,
        stop_lsn=backup.stop_lsn, timeline=backup.timeline, wal_segment_size=info.wal_segment_size,
        compression=repo.compression, encryption=backup.files[0].encryption if backup.files else None, size=size,
        database_size=info.cluster_size, files=backup.files, labels=labels, tables=info.tables,
        verifications=[Verification(at=datetime.now(UTC), method="quick", ok=True, checks=checks)] if checks else [],
    )
    repo.storage().finish_backup(backup_id, manifest.to_bytes())
    get_run_logger().info("manifest written: base backup %s is complete", backup_id)
    return manifest


@task(name="wal-settings", cache_policy=NO_CACHE)
def wal_settings(repo: BackupRepository, config_file: str | None) -> WalConfig:
    """The WAL archive this repository implies; refreshed into `config_file` (what archive_command
    and restore_command read) when one is named."""
    from pgkeeper.wal import config as walconfig
    from pgkeeper.wal.setup import config_from_repository, write_config

    previous = None
    if config_file and Path(config_file).exists():
        previous = walconfig.load(config_file)
    cfg = config_from_repository(repo, previous)
    if config_file:
        write_config(Path(config_file), cfg)
        get_run_logger().info("WAL settings written to %s (spool %s)", config_file, cfg.spool)
    return cfg


def base_backup_markdown(m: Manifest, location: str) -> str:
    lines = [
        f"# Base backup {m.backup_id}",
        "",
        f"- **Cluster**: PostgreSQL {m.server_version}, system {m.system_identifier}, "
        f"{human_bytes(m.database_size)}",
        f"- **Location**: `{location}`",
        f"- **Size**: {human_bytes(m.size)} ({m.compression}) in {len(m.files)} files",
        f"- **WAL**: {m.start_lsn} .. {m.stop_lsn}, timeline {m.timeline}",
        f"- **Consistent from**: {m.finished_at.isoformat()} (earliest point-in-time target)",
        f"- **Status**: {m.status}",
    ]
    for v in m.verifications:
        lines += [f"- {k}: {val}" for k, val in v.checks.items()]
    return "\n".join(lines)


@task(name="report-base-backup")
def report_base_backup(manifest: Manifest, location: str) -> str:
    from prefect.artifacts import create_markdown_artifact

    from pgkeeper.tasks.report import artifact_key

    create_markdown_artifact(base_backup_markdown(manifest, location), key=artifact_key("base-backup"),
                             description=f"Base backup {manifest.backup_id}")
    return manifest.backup_id

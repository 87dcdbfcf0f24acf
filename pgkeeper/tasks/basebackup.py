"""Physical base backups: pg_basebackup (tar, compressed, -X none), stored, proven restorable.

WAL is not inside the backup (-X none): pg_basebackup then waits until the server has
archived the WAL up to the backup's stop position, so once it returns the archive holds
everything needed to make the backup consistent. check_wal_archived() proves it.

A cluster without tablespaces of its own (the usual case) is streamed: `pg_basebackup -D -`
writes one tar to stdout, which goes through the compressor (zstd on threads) into the
repository, and on the way every file is hashed and checked against PostgreSQL's
backup_manifest (pgkeeper.tarstream: pg_verifybackup's file checks, on the stream). The
verification then reads the stored files back against their sha256 and parses the backup's WAL
with pg_waldump (pg_verifybackup's WAL check). A full pg_verifybackup of an unpacked copy is
part of the PITR drill. A cluster with tablespaces is staged as before: pg_basebackup into
scratch, stored, then unpacked and checked by pg_verifybackup (PG 15's pg_verifybackup reads
plain directories only).
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pgkeeper import __version__, pgtools
from pgkeeper.base_unpack import unpack_backup
from pgkeeper.basebackup_tool import MANIFEST_CHECKSUMS
from pgkeeper.basestream import (
    PG_MANIFEST,
    READ_CHUNK,
    BaseBackupFiles,
    ClusterInfo,
    cluster_facts,
    stream_into,
    wal_range_of,
)
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.errors import IntegrityError, PgkeeperError
from pgkeeper.fmt import human_bytes
from pgkeeper.manifest import Manifest, StoredFile, Verification
from pgkeeper.names import backup_id_server
from pgkeeper.storage.interface import Storage
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.wal.archive import WalArchive, segments_between
from pgkeeper.wal.config import WalConfig
from pgkeeper.wal.setup import refresh_wal_config

if TYPE_CHECKING:
    from pgkeeper.early_base import EarlyBaseBackup

STAGING = ".pg_basebackup"


@task(name="physical-preflight", cache_policy=NO_CACHE, **RETRYABLE)
def physical_preflight(conn: PostgresConnection, repo: BackupRepository,
                       early: EarlyBaseBackup | None = None) -> ClusterInfo:
    """Server reachable and archiving WAL; repository writable with room for the whole cluster.

    With `early`, what `pgkeeper base-backup` found before this run existed (the same checks,
    made before its stream started) is the answer, and its warnings are raised here."""
    from pgkeeper.alerts import warn

    if early is not None:
        info = early.info
        for kind, message, details in early.alerts:
            warn(kind, message, **details)
    else:
        info = cluster_facts(conn, repo, warn)
    get_run_logger().info("server %s, PostgreSQL %s, cluster %s, archive_command %r", conn.describe(),
                          info.server_version, human_bytes(info.cluster_size), info.archive_command)
    return info


def _compress_option(repo: BackupRepository) -> str:
    # Server-side: the walsender compresses, the network and this host carry a third of the bytes.
    return f"server-{'zstd' if repo.compression == 'zstd' else 'gzip'}:{repo.level()}"


def wal_range(pg_manifest: Path) -> tuple[str, str, int]:
    """(start LSN, stop LSN, timeline) from PostgreSQL's backup_manifest."""
    return wal_range_of(json.loads(pg_manifest.read_text()), str(pg_manifest))


@task(name="pg-basebackup", cache_policy=NO_CACHE, **RETRYABLE)
def take_base_backup(conn: PostgresConnection, repo: BackupRepository, backup_id: str) -> BaseBackupFiles:
    """pg_basebackup -Ft -X none --checkpoint=fast, compressed, into scratch; then stored."""
    logger = get_run_logger()
    storage = repo.storage()
    with storage.scratch("basebackup") as scratch:  # a retried attempt starts clean
        staging = scratch / STAGING
        argv = [pgtools.tool("pg_basebackup"), "-D", str(staging), "-Ft", "-X", "none", "--checkpoint=fast",
                f"--compress={_compress_option(repo)}", f"--manifest-checksums={MANIFEST_CHECKSUMS}", "-l",
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


@task(name="pg-basebackup", cache_policy=NO_CACHE, **RETRYABLE)
def stream_base_backup(conn: PostgresConnection, repo: BackupRepository, backup_id: str,
                       early: EarlyBaseBackup | None = None) -> BaseBackupFiles:
    """pg_basebackup -Ft -D - -X none --checkpoint=fast straight into the repository: compressed
    here on threads, every file checked against backup_manifest on the way (no staging copy).

    With `early` (the stream `pgkeeper base-backup` started before this run existed, into this
    very backup id), its result is this step's; a retry streams anew."""
    logger = get_run_logger()
    if early is not None and early.take_stream(backup_id):
        logger.info("pg_basebackup started before the run (pgkeeper base-backup's early start): waiting for it")
        files = early.result()
    else:
        files = stream_into(conn, repo, backup_id)
    tar = files.files[-1]
    logger.info("pg_basebackup: %s stored (%s of files), %d files match backup_manifest, "
                "WAL %s..%s on timeline %d", human_bytes(tar.size), human_bytes(files.raw_size),
                files.streamed_check, files.start_lsn, files.stop_lsn, files.timeline)
    return files


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
    """A streamed backup: its stored files read back against their sha256, its WAL parsed by
    pg_waldump (its files were checked against backup_manifest as they streamed). A staged one:
    unpack a scratch copy and run pg_verifybackup on it with the archived WAL."""
    if backup.streamed_check:
        return _verify_streamed(repo, backup_id, backup, walcfg, segments)
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


def _verify_streamed(repo: BackupRepository, backup_id: str, backup: BaseBackupFiles, walcfg: WalConfig,
                     segments: list[str]) -> dict[str, str]:
    from concurrent.futures import ThreadPoolExecutor

    storage = repo.storage()

    def read_back() -> None:  # what is on disk (or in the bucket) is what was hashed on the way in
        for f in backup.files:
            with storage.open_plain(backup_id, f) as reader:
                while reader.read(READ_CHUNK):
                    pass

    try:
        # Both checks wait mostly outside the GIL (hashing, reading, pg_waldump): side by side.
        with ThreadPoolExecutor(1) as pool:
            stored = pool.submit(read_back)
            with storage.scratch("verify-base") as scratch:
                fetch_segments(WalArchive(walcfg), segments, scratch / "wal")
                # pg_verifybackup's WAL check, as it runs it: every record from start to stop parses.
                pgtools.run([pgtools.tool("pg_waldump"), "--quiet", f"--path={scratch / 'wal'}",
                             f"--timeline={backup.timeline}", f"--start={backup.start_lsn}",
                             f"--end={backup.stop_lsn}"], timeout=repo.dump_timeout_seconds)
            stored.result()
    except PgkeeperError as exc:
        raise IntegrityError(f"base backup {backup_id} failed verification: {exc}") from None
    get_run_logger().info("base backup %s: stored files read back, WAL %s..%s parsed", backup_id, segments[0],
                          segments[-1])
    return {"checksums": "PASS: every stored file read back matches its sha256 in the manifest",
            "backup_manifest": f"PASS: {backup.streamed_check} files match backup_manifest's sizes and "
                               f"{MANIFEST_CHECKSUMS} checksums (checked as pg_basebackup streamed them)",
            "wal": f"PASS: WAL {segments[0]}..{segments[-1]} parsed by pg_waldump from {backup.start_lsn} "
                   f"to {backup.stop_lsn}"}


@task(name="pg-verifybackup", cache_policy=NO_CACHE)
def verify_unpacked_backup(repo: BackupRepository, source: str, manifest: Manifest, data_dir: str,
                           walcfg: WalConfig) -> str:
    """pg_verifybackup on a freshly unpacked base backup with its WAL from the archive: the full
    check (every file, then the WAL) that the base-backup flow makes on the stream."""
    storage = repo.storage(source)
    pg_manifest = next((f for f in manifest.files if f.name == PG_MANIFEST), None)
    if pg_manifest is None or not (manifest.start_lsn and manifest.stop_lsn):
        return "SKIP the backup has no backup_manifest"
    segments = segments_between(manifest.start_lsn, manifest.stop_lsn, manifest.timeline or 1,
                                manifest.wal_segment_size or 16 * 1024 * 1024)
    try:
        with storage.scratch("verify-base") as scratch:
            copy_checked(storage, manifest.backup_id, pg_manifest, scratch / PG_MANIFEST)
            fetch_segments(WalArchive(walcfg), segments, scratch / "wal")
            pgtools.run([pgtools.tool("pg_verifybackup"), "-q", "-m", str(scratch / PG_MANIFEST),
                         "-w", str(scratch / "wal"), data_dir], timeout=repo.dump_timeout_seconds)
    except PgkeeperError as exc:
        raise IntegrityError(f"base backup {manifest.backup_id} failed pg_verifybackup: {exc}") from None
    get_run_logger().info("pg_verifybackup: base backup %s unpacked in %s and its WAL verified", manifest.backup_id,
                          data_dir)
    return f"PASS files and WAL {segments[0]}..{segments[-1]} verified on the unpacked copy"


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
def wal_settings(repo: BackupRepository, config_file: str | None,
                 early: EarlyBaseBackup | None = None) -> WalConfig:
    """The WAL archive this repository implies; refreshed into `config_file` (what archive_command
    and restore_command read) when one is named. With `early`, `pgkeeper base-backup` refreshed it
    before its stream started (the same function, the same file)."""
    cfg = early.walcfg if early is not None else refresh_wal_config(repo, config_file)
    if config_file:
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

"""Preflight: is the server there, how big is the job, and does it fit on the disk?"""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper.alerts import warn
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups
from pgkeeper.errors import RepositoryError
from pgkeeper.fmt import human_bytes
from pgkeeper.names import server_key
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tls import plaintext_warning
from pgkeeper.wal.identity import check_backup

# With no earlier backup to learn from, assume the compressed dump is half the table data.
FIRST_BACKUP_RATIO = 0.5


class ServerInfo(BaseModel):
    database: str
    server_version: str
    system_identifier: str | None
    # Which server the backup is of (names.server_key): named in the backup's id and manifest.
    server: str | None = None
    host: str | None = None
    port: int | None = None
    server_time: datetime | None = None  # the server's clock, to check ours against (pgkeeper.clock)
    database_size: int
    table_bytes: int
    estimated_backup_bytes: int
    free_bytes: int
    total_bytes: int
    warnings: list[str] = []


def size_estimate(repo: BackupRepository, database: str, database_size: int, table_bytes: int) -> int:
    """Expected stored size: the last backup scaled by growth, else a cautious guess."""
    previous = list_backups(repo.storage(), database, kind="logical")
    if previous and previous[-1].database_size:
        last = previous[-1]
        growth = database_size / max(last.database_size or 1, 1)
        return int(last.size * max(growth, 1.0) * 1.1)
    return int(table_bytes * FIRST_BACKUP_RATIO)


@task(name="preflight", cache_policy=NO_CACHE, **RETRYABLE)
def preflight(conn: PostgresConnection, repo: BackupRepository) -> ServerInfo:
    """Server reachable, its version and size; repository writable with room to spare."""
    logger = get_run_logger()
    with conn.connect() as c:
        version = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        server_time = c.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        db_size = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        # From pg_class, not pg_table_size(): an estimate must never wait behind a table lock.
        table_bytes = c.execute(
            "SELECT coalesce(sum(c.relpages::bigint + coalesce(t.relpages, 0)), 0)"
            " * current_setting('block_size')::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_class t ON t.oid = c.reltoastrelid "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()[0]  # type: ignore[index]
        try:
            sysid = str(c.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])  # type: ignore[index]
        except Exception:
            c.rollback()
            sysid = None
        plaintext = plaintext_warning(conn.host, conn.port, conn.sslmode, c)
    storage = repo.storage()
    storage.ensure_writable()
    # A repository that holds a cluster's WAL archive belongs to that cluster (wal/identity.py).
    check_backup(repo.wal_spool(), sysid, version, None, f"a backup of {conn.describe()}", claim=False)
    free, total = storage.free_space() or (0, 0)
    estimate = size_estimate(repo, conn.database, db_size, int(table_bytes))
    warnings = []
    if plaintext:  # another machine, no TLS: the password and every row crossed the network in clear
        warnings.append(plaintext)
        warn("plaintext-connection", plaintext, database=conn.database, host=conn.host, port=conn.port)
    if estimate > free:
        raise RepositoryError(
            f"not enough space in {storage.describe()}: the backup needs about {human_bytes(estimate)}, "
            f"{human_bytes(free)} free")
    if total and (free - estimate) / total < repo.min_free_fraction:
        warnings.append(f"low disk space: {human_bytes(free)} free of {human_bytes(total)} in {storage.describe()}")
        warn("low-disk", warnings[-1], database=conn.database, free_bytes=free, total_bytes=total)
    logger.info("server %s, PostgreSQL %s, database %s is %s; repository %s has %s free",
                conn.describe(), version, conn.database, human_bytes(db_size), storage.describe(), human_bytes(free))
    return ServerInfo(database=conn.database, server_version=version, system_identifier=sysid, server_time=server_time,
                      server=server_key(conn.host, conn.port, sysid), host=conn.host, port=conn.port,
                      database_size=db_size, table_bytes=int(table_bytes), estimated_backup_bytes=estimate,
                      free_bytes=free, total_bytes=total, warnings=warnings)


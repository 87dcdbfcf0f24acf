"""What a backup learns about its server and repository before it starts, and the checks that
refuse to start it (no room, another cluster's repository). No Prefect: the preflight task
(tasks/preflight.py) runs it in a run, `pgkeeper backup`'s early start before Prefect is imported."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from pgkeeper.catalog import list_backups
from pgkeeper.errors import RepositoryError
from pgkeeper.fmt import human_bytes
from pgkeeper.names import server_key
from pgkeeper.tls import plaintext_warning
from pgkeeper.wal.identity import check_backup

if TYPE_CHECKING:
    from pgkeeper.connection import ConnectionVerbs
    from pgkeeper.repository import RepositoryVerbs

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


def size_estimate(repo: RepositoryVerbs, database: str, database_size: int, table_bytes: int) -> int:
    """Expected stored size: the last backup scaled by growth, else a cautious guess."""
    previous = list_backups(repo.storage(), database, kind="logical")
    if previous and previous[-1].database_size:
        last = previous[-1]
        growth = database_size / max(last.database_size or 1, 1)
        return int(last.size * max(growth, 1.0) * 1.1)
    return int(table_bytes * FIRST_BACKUP_RATIO)


Alert = Callable[..., None]  # (kind, message, database=..., **details): alerts.warn in a run


def server_facts(conn: ConnectionVerbs, repo: RepositoryVerbs, alert: Alert) -> ServerInfo:
    """Server reachable, its version and size; repository writable with room to spare. What
    must reach people (a plaintext connection, low disk) goes to `alert` as it is found."""
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
    warnings: list[str] = []
    if plaintext:  # another machine, no TLS: the password and every row crossed the network in clear
        warnings.append(plaintext)
        alert("plaintext-connection", plaintext, database=conn.database, host=conn.host, port=conn.port)
    if estimate > free:
        raise RepositoryError(
            f"not enough space in {storage.describe()}: the backup needs about {human_bytes(estimate)}, "
            f"{human_bytes(free)} free")
    if total and (free - estimate) / total < repo.min_free_fraction:
        warnings.append(f"low disk space: {human_bytes(free)} free of {human_bytes(total)} in {storage.describe()}")
        alert("low-disk", warnings[-1], database=conn.database, free_bytes=free, total_bytes=total)
    return ServerInfo(database=conn.database, server_version=version, system_identifier=sysid, server_time=server_time,
                      server=server_key(conn.host, conn.port, sysid), host=conn.host, port=conn.port,
                      database_size=db_size, table_bytes=int(table_bytes), estimated_backup_bytes=estimate,
                      free_bytes=free, total_bytes=total, warnings=warnings)

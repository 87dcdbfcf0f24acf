"""Which backup a restore takes (no Prefect: the restore's plan and `pgkeeper restore`'s early
fetch both choose through `chosen_backup`, so they cannot choose differently)."""

from __future__ import annotations

from typing import Any

from pgkeeper.catalog import list_backups, of_one_server, resolve_backup
from pgkeeper.errors import NotFound, PgkeeperError
from pgkeeper.manifest import Manifest
from pgkeeper.names import LATEST, parse_backup_ref, server_key

PRE_RESTORE_LABEL = "pre-restore"


def server_cluster(conn: Any) -> str | None:  # conn: ConnectionVerbs (block or plain)
    """The configured server's system identifier (None if this role may not read it)."""
    import psycopg

    try:
        with conn.connect() as c:
            return str(c.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])  # type: ignore[index]
    except (PgkeeperError, psycopg.Error):
        return None


def newest_regular_backup(storage: Any, database: str,  # storage: LocalStorage | S3Storage
                          system_identifier: str | None = None, server: str | None = None,
                          prefer: tuple[str, ...] = ()) -> Manifest:
    """What `latest` means for a restore: the newest backup of the database, from one server
    (`server`, else the one server that has any, else the configured one: catalog.of_one_server),
    that is not a pre-restore safety copy.

    A safety backup holds the data a restore replaced; picking it for the next `latest` would
    quietly undo the restore. It stays restorable by its id. Backups of the same database name
    from another cluster (a shared repository) are not `latest` for this server; when there are
    none of this cluster at all (the server was rebuilt), those of a single other cluster are.
    """
    candidates = [m for m in list_backups(storage, database, kind="logical") if PRE_RESTORE_LABEL not in m.labels]
    if candidates and (server or any(m.server for m in candidates)):
        mine = of_one_server(candidates, server, prefer, f" of database {database!r} in {storage.describe()}")
        if mine:
            return mine[-1]
    if system_identifier and candidates:
        mine = [m for m in candidates if m.system_identifier in (None, system_identifier)]
        others = sorted({m.system_identifier for m in candidates if m not in mine}, key=str)
        if not mine and len(others) > 1:
            raise NotFound(f"no backup of database {database!r} from this server (cluster {system_identifier}) in "
                           f"{storage.describe()}; it holds backups from clusters {', '.join(map(str, others))}: "
                           "name the backup id to restore")
        candidates = mine or candidates
    if candidates:
        return candidates[-1]
    return resolve_backup(storage, LATEST, database, kind="logical")  # raises the catalog's own "nothing there" line


def chosen_backup(conn: Any, storage: Any, backup: str, server: str | None = None) -> Manifest:
    """The manifest a restore of `backup` ('latest', an id, an old file name) takes from `storage`
    for the database of `conn` (ConnectionVerbs); `server` as in newest_regular_backup."""
    ref = parse_backup_ref(backup)
    if ref != LATEST:
        # An explicit id may name a base backup: resolved anyway, for the caller to say to use pitr.
        return resolve_backup(storage, ref, server=server)
    sysid = server_cluster(conn)
    # Without --server, the connection's own server breaks a tie between servers.
    own = (server_key(conn.host, conn.port, sysid) if sysid else "", f"{conn.host}:{conn.port}")
    return newest_regular_backup(storage, conn.database, sysid, server, own)

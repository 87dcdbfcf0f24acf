"""The catalog of backups, read from the repository alone: list, resolve a name, latest.

Several servers may share a repository (a fleet's dumps in one bucket): every backup names its
server (names.server_key), and `latest` is the newest backup of one server and database. When a
database name has backups from more than one server and the caller did not say which (`server`,
or `prefer`: the server the flow is connected to), resolving refuses in one line naming them.
Backups made before ids named their server form the `unknown` group; once any backup names its
server, `latest` looks only at those (after an upgrade the newer backups are the named ones).
"""

from __future__ import annotations

from typing import Protocol

from pydantic import ValidationError

from pgkeeper.errors import BadName, IntegrityError, NotFound
from pgkeeper.manifest import Manifest
from pgkeeper.names import LATEST, UNKNOWN_SERVER, backup_id_stamp, parse_backup_ref, server_key


class ManifestSource(Protocol):
    def describe(self) -> str: ...
    def list_backup_ids(self) -> list[str]: ...
    def read_manifest(self, backup_id: str) -> bytes | None: ...


def list_backups(storage: ManifestSource, database: str | None = None, kind: str | None = None,
                 refused: list[IntegrityError] | None = None, server: str | None = None) -> list[Manifest]:
    """Complete backups, oldest first, optionally of one database, kind ('logical' dumps or
    'physical' base backups) and server (matches_server). An unreadable manifest is not a backup;
    one whose signature does not hold (unsigned, tampered) is not either, and goes into `refused`
    for the caller to name."""
    found = []
    for backup_id in storage.list_backup_ids():
        try:
            data = storage.read_manifest(backup_id)
        except IntegrityError as exc:
            if refused is not None:
                refused.append(exc)
            continue
        if data is None:
            continue
        try:
            m = Manifest.from_bytes(data)
        except (ValidationError, ValueError):
            continue
        if m.backup_id != backup_id:
            continue
        if (database is None or m.database == database) and (kind is None or m.kind == kind) \
                and (server is None or matches_server(m, server)):
            found.append(m)
    return found


def matches_server(m: Manifest, selector: str) -> bool:
    """Whether a backup came from the server a user named: its server key, `host:port` as the
    backup's connection gave them, its system identifier, or `unknown` for backups that name none."""
    sel = selector.strip()
    if sel == UNKNOWN_SERVER or m.server is None:
        return sel == UNKNOWN_SERVER and m.server is None
    if sel in (m.server, m.system_identifier):
        return True
    host, colon, port = sel.rpartition(":")
    if colon and port.isdigit():
        if m.host is not None:
            return (m.host, m.port) == (host, int(port))
        return (m.server + "-").startswith(server_key(host, int(port), None) + "-")
    return False


def servers_of(backups: list[Manifest]) -> list[str]:
    """The server groups among `backups`, in order of first appearance."""
    return list(dict.fromkeys(m.server_group for m in backups))


def of_one_server(backups: list[Manifest], server: str | None, prefer: tuple[str, ...] = (),
                  what: str = "") -> list[Manifest]:
    """The backups `latest` chooses among: those of `server` if given; else those of the one server
    that has any; else of the first `prefer` selector that picks exactly one of the servers
    (the flow's own connection). Several servers and no choice: BadName, one line naming them."""
    if server:
        mine = [m for m in backups if matches_server(m, server)]
        if not mine and backups:
            raise NotFound(f"no backups from server {server!r}{what}; there are from: {_labels(backups)}")
        return mine
    named = [m for m in backups if m.server is not None]
    groups = servers_of(named)
    if len(groups) <= 1:
        return named or backups
    for sel in prefer:
        picked = servers_of([m for m in named if sel and matches_server(m, sel)])
        if len(picked) == 1:
            return [m for m in named if m.server == picked[0]]
    raise BadName(f"backups from {len(groups)} servers{what}: {_labels(named)}; "
                  "choose one with --server (host:port, system identifier or server key)")


def _labels(backups: list[Manifest]) -> str:
    seen: dict[str, str] = {}
    for m in backups:
        seen.setdefault(m.server_group, m.server_label if m.server is None else f"{m.server_label} [{m.server}]")
    return ", ".join(seen.values())


def resolve_backup(storage: ManifestSource, ref: str, database: str | None = None,
                   kind: str | None = None, server: str | None = None, prefer: tuple[str, ...] = ()) -> Manifest:
    """The backup a user means by `ref` ('latest', an id with or without its server, or an old
    file name), of `server` when given (of_one_server)."""
    wanted = parse_backup_ref(ref)
    refused: list[IntegrityError] = []
    backups = list_backups(storage, database, kind, refused)
    where = storage.describe() + (f" for database {database!r}" if database else "")
    if wanted == LATEST:
        # A refused manifest newer than the newest trusted backup may be tonight's backup made
        # unreadable on purpose: never fall back to an older one without saying so.
        newest = backups[-1].backup_id if backups else ""
        for exc in refused:
            if _backup_id_in(str(exc)) > newest:
                raise exc
        if not backups:
            raise NotFound(f"no backups in {where}: 'latest' has nothing to point to")
        mine = of_one_server(backups, server, prefer, f" in {where}")
        if not mine:
            raise NotFound(f"no backups from server {server!r} in {where}")
        return mine[-1]
    for m in backups:
        if m.backup_id == wanted:
            return m
    # The id without its server, as people type it: unique unless two servers began in one second.
    same = [m for m in backups
            if backup_id_stamp(m.backup_id) == wanted and (server is None or matches_server(m, server))]
    if len(same) == 1:
        return same[0]
    if same:
        raise BadName(f"{wanted} names {len(same)} backups in {where}: {', '.join(m.backup_id for m in same)}; "
                      "give the full id or --server")
    for exc in refused:
        if wanted in str(exc):
            raise exc
    raise NotFound(f"backup {wanted} not found in {where}")


def _backup_id_in(message: str) -> str:
    import re

    found = re.search(r"backup_\d{8}_\d{6}(?:_[a-z0-9-]+)?", message)
    return found.group(0) if found else ""

"""The catalog of backups, read from the repository alone: list, resolve a name, latest."""

from __future__ import annotations

from typing import Protocol

from pydantic import ValidationError

from pgkeeper.errors import NotFound
from pgkeeper.manifest import Manifest
from pgkeeper.names import LATEST, parse_backup_ref


class ManifestSource(Protocol):
    def describe(self) -> str: ...
    def list_backup_ids(self) -> list[str]: ...
    def read_manifest(self, backup_id: str) -> bytes | None: ...


def list_backups(storage: ManifestSource, database: str | None = None, kind: str | None = None) -> list[Manifest]:
    """Complete backups, oldest first, optionally of one database and kind ('logical' dumps or
    'physical' base backups). An unreadable manifest is not a backup."""
    found = []
    for backup_id in storage.list_backup_ids():
        data = storage.read_manifest(backup_id)
        if data is None:
            continue
        try:
            m = Manifest.from_bytes(data)
        except (ValidationError, ValueError):
            continue
        if m.backup_id != backup_id:
            continue
        if (database is None or m.database == database) and (kind is None or m.kind == kind):
            found.append(m)
    return found


def resolve_backup(storage: ManifestSource, ref: str, database: str | None = None,
                   kind: str | None = None) -> Manifest:
    """The backup a user means by `ref` ('latest', an id, or an old file name)."""
    wanted = parse_backup_ref(ref)
    backups = list_backups(storage, database, kind)
    where = storage.describe() + (f" for database {database!r}" if database else "")
    if wanted == LATEST:
        if not backups:
            raise NotFound(f"no backups in {where}: 'latest' has nothing to point to")
        return backups[-1]
    for m in backups:
        if m.backup_id == wanted:
            return m
    raise NotFound(f"backup {wanted} not found in {where}")

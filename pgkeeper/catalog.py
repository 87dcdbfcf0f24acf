"""The catalog of backups, read from the repository alone: list, resolve a name, latest."""

from __future__ import annotations

from typing import Protocol

from pydantic import ValidationError

from pgkeeper.errors import IntegrityError, NotFound
from pgkeeper.manifest import Manifest
from pgkeeper.names import LATEST, parse_backup_ref


class ManifestSource(Protocol):
    def describe(self) -> str: ...
    def list_backup_ids(self) -> list[str]: ...
    def read_manifest(self, backup_id: str) -> bytes | None: ...


def list_backups(storage: ManifestSource, database: str | None = None, kind: str | None = None,
                 refused: list[IntegrityError] | None = None) -> list[Manifest]:
    """Complete backups, oldest first, optionally of one database and kind ('logical' dumps or
    'physical' base backups). An unreadable manifest is not a backup; one whose signature does
    not hold (unsigned, tampered) is not either, and goes into `refused` for the caller to name."""
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
        if (database is None or m.database == database) and (kind is None or m.kind == kind):
            found.append(m)
    return found


def resolve_backup(storage: ManifestSource, ref: str, database: str | None = None,
                   kind: str | None = None) -> Manifest:
    """The backup a user means by `ref` ('latest', an id, or an old file name)."""
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
        return backups[-1]
    for m in backups:
        if m.backup_id == wanted:
            return m
    for exc in refused:
        if wanted in str(exc):
            raise exc
    raise NotFound(f"backup {wanted} not found in {where}")


def _backup_id_in(message: str) -> str:
    import re

    found = re.search(r"backup_\d{8}_\d{6}", message)
    return found.group(0) if found else ""

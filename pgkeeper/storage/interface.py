"""The storage interface: the verbs every flow and task uses, whatever the backend.

Drivers: `local.LocalStorage` (a directory), `s3.S3Storage` (a bucket prefix) and
`memory.MemoryStorage` (a dict, for fast tests of the logic above it). Callers get one from
`BackupRepository.storage()` and never import a driver or build a path inside the repository.

Layout, the same on every backend:
    backups/<backup_id>/<data files>, manifest.json (written last)
    wal/...                                        (the WAL archive, see pgkeeper.wal)
A backup without manifest.json does not exist: it is never listed, and garbage collection
removes it once its writer is gone.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from pgkeeper.manifest import StoredFile

MANIFEST = "manifest.json"


def check_file_name(name: str) -> str:
    """A file name inside one backup: never a path, never hidden (temp files are)."""
    from pgkeeper.errors import RepositoryError

    if not name or "/" in name or name.startswith("."):
        raise RepositoryError(f"bad file name in manifest: {name!r}")
    return name


class ArchiveState:
    """Where a backup's data objects sit and whether they can be read now (S3 archive classes
    need a restore request first; a disk is always readable)."""

    def __init__(self, storage_class: str, readable: bool = True, restoring: bool = False,
                 ready_until: datetime | None = None) -> None:
        self.storage_class = storage_class
        self.readable = readable
        self.restoring = restoring  # a restore request is under way
        self.ready_until = ready_until  # a restored copy is readable until then

    def describe(self) -> str:
        if self.restoring:
            return "no: restore under way"
        if not self.readable:
            return "no: needs a restore request"
        if self.ready_until is not None:
            return f"yes, until {self.ready_until:%Y-%m-%d %H:%M} UTC"
        return "yes"


class StoreWriter(Protocol):
    """What `write_file` yields: a writable file that knows what it stored."""

    def write(self, data: bytes) -> int: ...

    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...


@runtime_checkable
class Storage(Protocol):
    def describe(self) -> str:
        """Where the repository is, as a user would type it."""

    def location(self, backup_id: str) -> str:
        """Where one backup is, as a user would type it."""

    def ensure_writable(self) -> None:
        """Create the repository if needed; RepositoryError in one line if it cannot be written."""

    # -- the catalog ------------------------------------------------------------------------

    def list_backup_ids(self) -> list[str]:
        """Ids of complete backups (their manifest is stored), oldest first."""

    def claimed_ids(self) -> list[str]:
        """Ids of every backup folder, complete or not (a new id must be newer than all)."""

    def read_manifest(self, backup_id: str) -> bytes | None: ...

    # -- writing a backup: begin, files, finish (manifest last) ----------------------------

    def begin_backup(self, backup_id: str) -> None:
        """Claim a new backup exclusively; RepositoryError if it exists."""

    def write_file(self, backup_id: str, name: str) -> AbstractContextManager[StoreWriter]:
        """Write one file all-or-nothing; the writer's sha256/size describe the stored bytes."""

    def store_file(self, path: Path, backup_id: str, name: str) -> StoredFile:
        """Store a finished local file (removed afterwards) as one file of the backup."""

    def copy_from(self, source: Storage, backup_id: str, file: StoredFile) -> str:
        """Copy a file of `source`'s backup here byte for byte, proving it is the manifest's
        bytes; says how it was proven."""

    def finish_backup(self, backup_id: str, manifest: bytes) -> None:
        """Write the manifest: from this moment the backup exists."""

    def write_manifest(self, backup_id: str, manifest: bytes) -> None:
        """Replace the manifest of a complete backup (verification history)."""

    def abandon_backup(self, backup_id: str) -> None: ...

    def stored_file(self, name: str, writer: StoreWriter, raw_size: int | None = None) -> StoredFile:
        """The manifest's record of a file just written through `write_file`."""

    # -- reading ----------------------------------------------------------------------------

    def open_file(self, backup_id: str, name: str) -> BinaryIO:
        """The stored bytes of one file (NotFound if missing)."""

    def stat_file(self, backup_id: str, name: str) -> int:
        """Stored size of one file (NotFound if missing)."""

    def open_plain(self, backup_id: str, file: StoredFile) -> BinaryIO:
        """The file's content as written (decrypted, still compressed); the stored bytes are
        checked against the manifest's size and sha256 when the end is read."""

    # -- removing ---------------------------------------------------------------------------

    def delete_backup(self, backup_id: str) -> None:
        """Remove the manifest first, so a half-deleted backup is never listed."""

    def incomplete_backups(self, stale_after_s: float = 2 * 86400) -> list[str]:
        """Backups without a manifest whose writer is gone or that are older than the limit."""

    def clear_partial_writes(self, stale_after_s: float) -> int:
        """Remove what interrupted writes left outside backups (unfinished multipart uploads,
        scratch directories of dead processes) older than the limit; how many."""

    # -- storage classes (retention tiers) -------------------------------------------------

    def archive_state(self, backup_id: str) -> ArchiveState:
        """The storage class of the backup's data files and whether they can be read now."""

    def set_storage_class(self, backup_id: str, storage_class: str) -> int:
        """Move the backup's data files (never its manifest, which listing reads) to a storage
        class; how many objects moved. A disk has no classes: 0."""

    def request_restore(self, backup_id: str, days: int, retrieval_tier: str) -> ArchiveState:
        """Ask for a readable copy of archived data files for `days` (no-op when readable)."""

    # -- records beside the backups (the restore log) -----------------------------------------

    def write_record(self, folder: str, name: str, data: bytes) -> str:
        """One small file `<folder>/<name>` beside the backups, written atomically; where it is."""

    def read_records(self, folder: str) -> list[bytes]:
        """Every record in `folder`, by name."""

    # -- room and scratch -------------------------------------------------------------------

    def free_space(self) -> tuple[int, int] | None:
        """(free, total) bytes where the repository lives; None when unbounded (a bucket)."""

    def scratch(self, purpose: str) -> AbstractContextManager[Path]:
        """A private local directory outside every backup folder, removed afterwards."""


def check_record_name(folder: str, name: str) -> str:
    from pgkeeper.errors import RepositoryError

    if folder in ("backups", "wal") or "/" in folder or not folder or folder.startswith("."):
        raise RepositoryError(f"bad record folder {folder!r}")
    return f"{folder}/{check_file_name(name)}"


class DriverBase:
    """What every plain driver does the same way on top of its own open_file."""

    def location(self, backup_id: str) -> str:
        raise NotImplementedError

    def open_file(self, backup_id: str, name: str) -> BinaryIO:
        raise NotImplementedError

    def stored_file(self, name: str, writer: StoreWriter, raw_size: int | None = None) -> StoredFile:
        return StoredFile(name=name, size=writer.size, sha256=writer.sha256, raw_size=raw_size)

    def open_plain(self, backup_id: str, file: StoredFile) -> BinaryIO:
        from pgkeeper.errors import RepositoryError
        from pgkeeper.storage.streams import CheckedReader

        label = f"{self.location(backup_id)}/{file.name}"
        if file.encryption:
            raise RepositoryError(f"{label} is encrypted: read it through the repository's storage()")
        return CheckedReader(self.open_file(backup_id, file.name), file, label)  # type: ignore[return-value]

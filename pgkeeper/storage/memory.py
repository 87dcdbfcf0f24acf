"""The in-memory driver: the storage interface over a dict, for fast tests of the logic above it
(catalog, retention, garbage collection, resolve) without a disk or a bucket. Not for backups."""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pgkeeper.errors import NotFound, RepositoryError
from pgkeeper.manifest import StoredFile
from pgkeeper.names import is_backup_id
from pgkeeper.storage.interface import MANIFEST, ArchiveState, DriverBase, Storage, check_file_name, check_record_name
from pgkeeper.storage.streams import CHUNK, HashingReader, HashingWriter, check_digest


class MemoryStorage(DriverBase):
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        # backup id -> {file name: bytes}; a claimed backup has an entry, a complete one a manifest.
        self.backups: dict[str, dict[str, bytes]] = {}
        self.claimed_at: dict[str, float] = {}
        self.records: dict[str, bytes] = {}
        # Storage classes as a bucket would have them, to test tiers without one: backup id ->
        # class; a restore request becomes readable `restore_delay_s` after it is made.
        self.classes: dict[str, str] = {}
        self.restore_ready_at: dict[str, float] = {}
        self.restore_delay_s = 0.0

    def describe(self) -> str:
        return f"memory://{self.name}"

    def location(self, backup_id: str) -> str:
        return f"{self.describe()}/backups/{backup_id}"

    def ensure_writable(self) -> None:
        pass

    def _files(self, backup_id: str) -> dict[str, bytes]:
        if not is_backup_id(backup_id):
            raise RepositoryError(f"not a backup id: {backup_id!r}")
        try:
            return self.backups[backup_id]
        except KeyError:
            raise NotFound(f"backup {backup_id} is not in {self.describe()}") from None

    def list_backup_ids(self) -> list[str]:
        return sorted(i for i, files in self.backups.items() if MANIFEST in files)

    def claimed_ids(self) -> list[str]:
        return sorted(self.backups)

    def read_manifest(self, backup_id: str) -> bytes | None:
        return self.backups.get(backup_id, {}).get(MANIFEST)

    def begin_backup(self, backup_id: str) -> None:
        if not is_backup_id(backup_id):
            raise RepositoryError(f"not a backup id: {backup_id!r}")
        if backup_id in self.backups:
            raise RepositoryError(f"backup {backup_id} already exists in {self.describe()}")
        self.backups[backup_id] = {}
        self.claimed_at[backup_id] = time.time()

    @contextmanager
    def write_file(self, backup_id: str, name: str) -> Iterator[HashingWriter]:
        files = self._files(backup_id)
        check_file_name(name)
        buf = io.BytesIO()
        writer = HashingWriter(buf)
        yield writer
        files[name] = buf.getvalue()  # only a write that finished is stored

    def store_file(self, path: Path, backup_id: str, name: str) -> StoredFile:
        with open(path, "rb") as src, self.write_file(backup_id, name) as out:
            shutil.copyfileobj(src, out, CHUNK)
        path.unlink()
        return StoredFile(name=name, size=out.size, sha256=out.sha256)

    def copy_from(self, source: Storage, backup_id: str, file: StoredFile) -> str:
        with HashingReader(source.open_file(backup_id, file.name)) as reader:
            data = reader.read()
            check_digest(reader, file.size, file.sha256, f"{source.location(backup_id)}/{file.name}")
        self._files(backup_id)[file.name] = data
        return f"{file.name}: sha256 matches the manifest"

    def finish_backup(self, backup_id: str, manifest: bytes) -> None:
        self._files(backup_id)[MANIFEST] = manifest

    def write_manifest(self, backup_id: str, manifest: bytes) -> None:
        self._files(backup_id)[MANIFEST] = manifest

    def abandon_backup(self, backup_id: str) -> None:
        self.backups.pop(backup_id, None)

    def open_file(self, backup_id: str, name: str) -> BinaryIO:
        self.open_file_checked(backup_id, name)
        try:
            return io.BytesIO(self._files(backup_id)[check_file_name(name)])
        except KeyError:
            raise NotFound(f"{backup_id}/{name} is missing from {self.describe()}") from None

    def stat_file(self, backup_id: str, name: str) -> int:
        with self.open_file(backup_id, name) as f:
            return len(f.getbuffer())  # type: ignore[attr-defined]

    def delete_backup(self, backup_id: str) -> None:
        self.backups.pop(backup_id, None)
        self.classes.pop(backup_id, None)

    def incomplete_backups(self, stale_after_s: float = 2 * 86400) -> list[str]:
        cutoff = time.time() - stale_after_s
        return sorted(i for i, files in self.backups.items()
                      if MANIFEST not in files and (stale_after_s <= 0 or self.claimed_at.get(i, 0) < cutoff))

    def archive_state(self, backup_id: str) -> ArchiveState:
        from pgkeeper.retention import ARCHIVE_CLASSES

        self._files(backup_id)
        cls = self.classes.get(backup_id, "STANDARD")
        if cls not in ARCHIVE_CLASSES:
            return ArchiveState(cls)
        ready = self.restore_ready_at.get(backup_id)
        if ready is None:
            return ArchiveState(cls, readable=False)
        if ready > time.time():
            return ArchiveState(cls, readable=False, restoring=True)
        return ArchiveState(cls, readable=True)

    def set_storage_class(self, backup_id: str, storage_class: str) -> int:
        files = self._files(backup_id)
        self.classes[backup_id] = storage_class
        return len([n for n in files if n != MANIFEST])

    def request_restore(self, backup_id: str, days: int, retrieval_tier: str) -> ArchiveState:
        state = self.archive_state(backup_id)
        if not state.readable and not state.restoring:
            self.restore_ready_at[backup_id] = time.time() + self.restore_delay_s
        return self.archive_state(backup_id)

    def open_file_checked(self, backup_id: str, name: str) -> None:
        if name != MANIFEST and not self.archive_state(backup_id).readable:
            raise RepositoryError(f"{backup_id}/{name} is archived ({self.classes[backup_id]}): "
                                  "it needs a restore request first")

    def write_record(self, folder: str, name: str, data: bytes) -> str:
        rel = check_record_name(folder, name)
        self.records[rel] = data
        return f"{self.describe()}/{rel}"

    def read_records(self, folder: str) -> list[bytes]:
        prefix = check_record_name(folder, "x")[:-1]
        return [v for k, v in sorted(self.records.items()) if k.startswith(prefix)]

    def clear_partial_writes(self, stale_after_s: float) -> int:
        return 0

    def free_space(self) -> None:
        return None

    @contextmanager
    def scratch(self, purpose: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix=f"pgkeeper-{purpose}-") as d:
            yield Path(d)

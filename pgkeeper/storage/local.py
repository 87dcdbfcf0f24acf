"""The local (posix) repository driver: the storage interface over a directory.

Layout:  <root>/backups/<backup_id>/<data files>, manifest.json (written last)
         <root>/wal/...                                   (WAL archive, see pgkeeper.wal)
         <root>/.scratch/<purpose>-...                    (work space of running tasks)
A backup folder without manifest.json is incomplete: never listed, collected as garbage.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pgkeeper.errors import NotFound, RepositoryError
from pgkeeper.liveness import claim_dir, clear_dead_dirs
from pgkeeper.manifest import StoredFile
from pgkeeper.names import is_backup_id
from pgkeeper.storage.atomic import atomic_file, atomic_write_bytes, fsync_dir
from pgkeeper.storage.interface import MANIFEST, ArchiveState, DriverBase, Storage, check_file_name, check_record_name
from pgkeeper.storage.streams import CHUNK, HashingReader, HashingWriter, check_digest, sha256_of

IN_PROGRESS = ".in-progress"
SCRATCH = ".scratch"


class LocalStorage(DriverBase):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def location(self, backup_id: str) -> str:
        return str(self.backup_dir(backup_id))

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"

    @property
    def wal_dir(self) -> Path:
        return self.root / "wal"

    def backup_dir(self, backup_id: str) -> Path:
        if not is_backup_id(backup_id):
            raise RepositoryError(f"not a backup id: {backup_id!r}")
        return self.backups_dir / backup_id

    def ensure_writable(self) -> None:
        """Create the repository if needed; one clear line if we cannot write there."""
        try:
            self.backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = self.backups_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RepositoryError(f"repository {self.root} is not writable: {exc.strerror}") from None

    def claimed_ids(self) -> list[str]:
        if not self.backups_dir.is_dir():
            return []
        return sorted(p.name for p in self.backups_dir.iterdir() if is_backup_id(p.name))

    def begin_backup(self, backup_id: str) -> None:
        """Claim a new backup folder (exclusively) and mark it in progress."""
        path = self.backup_dir(backup_id)
        try:
            self.backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.mkdir(mode=0o700)
        except FileExistsError:
            raise RepositoryError(f"backup {backup_id} already exists in {self.root}") from None
        except OSError as exc:
            raise RepositoryError(f"cannot create {path}: {exc.strerror}") from None
        marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        atomic_write_bytes(path / IN_PROGRESS, json.dumps(marker).encode())
        fsync_dir(self.backups_dir)

    def finish_backup(self, backup_id: str, manifest: bytes) -> None:
        """Write the manifest last: from this moment on the backup exists."""
        path = self.backup_dir(backup_id)
        atomic_write_bytes(path / MANIFEST, manifest)
        (path / IN_PROGRESS).unlink(missing_ok=True)
        fsync_dir(path)

    def abandon_backup(self, backup_id: str) -> None:
        shutil.rmtree(self.backup_dir(backup_id), ignore_errors=True)

    @contextmanager
    def write_file(self, backup_id: str, name: str) -> Iterator[HashingWriter]:
        try:
            with atomic_file(self.file_path(backup_id, name)) as f:
                yield HashingWriter(f)
        except OSError as exc:
            raise RepositoryError(f"writing {backup_id}/{name} in {self.root} failed: "
                                  f"{exc.strerror or exc}") from None

    def store_file(self, path: Path, backup_id: str, name: str) -> StoredFile:
        """Move a local file in (a rename on the same filesystem), then hash what is stored."""
        dest = self.file_path(backup_id, name)
        try:
            os.chmod(path, 0o600)
            os.rename(path, dest)
        except OSError:  # another filesystem: copy through the write path
            with open(path, "rb") as src, self.write_file(backup_id, name) as out:
                shutil.copyfileobj(src, out, CHUNK)
            os.unlink(path)
            return StoredFile(name=name, size=out.size, sha256=out.sha256)
        fsync_dir(dest.parent)
        with open(dest, "rb") as f:
            sha, size = sha256_of(f)
        return StoredFile(name=name, size=size, sha256=sha)

    def copy_from(self, source: Storage, backup_id: str, file: StoredFile) -> str:
        label = f"{source.location(backup_id)}/{file.name}"
        with HashingReader(source.open_file(backup_id, file.name)) as reader, \
                self.write_file(backup_id, file.name) as out:
            while chunk := reader.read(CHUNK):
                out.write(chunk)
            check_digest(reader, file.size, file.sha256, label)
        return f"{file.name}: sha256 matches the manifest"

    def file_path(self, backup_id: str, name: str) -> Path:
        """The file's place on disk: for this driver's own use and for tools that need a path
        (pg_verifybackup); callers of the interface do not build paths."""
        return self.backup_dir(backup_id) / check_file_name(name)

    def open_file(self, backup_id: str, name: str) -> BinaryIO:
        try:
            return open(self.file_path(backup_id, name), "rb")
        except FileNotFoundError:
            raise NotFound(f"{backup_id}/{name} is missing from {self.root}") from None

    def stat_file(self, backup_id: str, name: str) -> int:
        try:
            return self.file_path(backup_id, name).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"{backup_id}/{name} is missing from {self.root}") from None

    def list_backup_ids(self) -> list[str]:
        """Ids of complete backups (those with a manifest), oldest first."""
        if not self.backups_dir.is_dir():
            return []
        return sorted(p.name for p in self.backups_dir.iterdir()
                      if is_backup_id(p.name) and (p / MANIFEST).is_file())

    def read_manifest(self, backup_id: str) -> bytes | None:
        try:
            return (self.backup_dir(backup_id) / MANIFEST).read_bytes()
        except FileNotFoundError:
            return None

    def write_manifest(self, backup_id: str, manifest: bytes) -> None:
        atomic_write_bytes(self.backup_dir(backup_id) / MANIFEST, manifest)

    def delete_backup(self, backup_id: str) -> None:
        """Remove the manifest first, so a half-deleted backup is never listed."""
        path = self.backup_dir(backup_id)
        (path / MANIFEST).unlink(missing_ok=True)
        fsync_dir(path)
        shutil.rmtree(path, ignore_errors=True)

    def incomplete_backups(self, stale_after_s: float = 2 * 86400) -> list[str]:
        """Folders without a manifest whose writer is gone, or that are older than a limit."""
        if not self.backups_dir.is_dir():
            return []
        found = []
        for p in self.backups_dir.iterdir():
            if not is_backup_id(p.name) or (p / MANIFEST).exists():
                continue
            age = time.time() - p.stat().st_mtime
            if _writer_alive(p / IN_PROGRESS) and age < stale_after_s:
                continue
            found.append(p.name)
        return sorted(found)

    # A disk has no storage classes: every backup is readable now and nothing moves.
    def archive_state(self, backup_id: str) -> ArchiveState:
        return ArchiveState("LOCAL")

    def set_storage_class(self, backup_id: str, storage_class: str) -> int:
        return 0

    def request_restore(self, backup_id: str, days: int, retrieval_tier: str) -> ArchiveState:
        return ArchiveState("LOCAL")

    def write_record(self, folder: str, name: str, data: bytes) -> str:
        path = self.root / check_record_name(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(path, data)
        return str(path)

    def read_records(self, folder: str) -> list[bytes]:
        path = self.root / check_record_name(folder, "x").rsplit("/", 1)[0]
        return [p.read_bytes() for p in sorted(path.iterdir()) if not p.name.startswith(".")] \
            if path.is_dir() else []

    def clear_partial_writes(self, stale_after_s: float) -> int:
        """Scratch directories whose process is gone; how many were removed (temp files of an
        unfinished write die with the incomplete backup folder that holds them)."""
        return len(clear_dead_dirs(self.root / SCRATCH, ""))

    @contextmanager
    def scratch(self, purpose: str) -> Iterator[Path]:
        """A work directory under <root>/.scratch (same filesystem: store_file is a rename),
        tagged with its process; the next caller removes those a killed run left."""
        import tempfile

        base = self.root / SCRATCH
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        clear_dead_dirs(base, f"{purpose}-")
        path = Path(tempfile.mkdtemp(prefix=f"{purpose}-", dir=base))
        claim_dir(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def free_space(self) -> tuple[int, int]:
        """(free bytes, total bytes) of the filesystem holding the repository."""
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        return usage.free, usage.total


def _writer_alive(marker: Path) -> bool:
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("host") != socket.gethostname():
        return True  # cannot tell from here: leave it to the age limit
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True

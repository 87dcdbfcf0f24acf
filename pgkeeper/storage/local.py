"""The local (posix) repository driver.

Layout:  <root>/backups/<backup_id>/<data files>, manifest.json (written last)
         <root>/wal/...                                   (WAL archive, see pgkeeper.wal)
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
from pgkeeper.names import is_backup_id
from pgkeeper.storage.atomic import atomic_file, atomic_write_bytes, fsync_dir

MANIFEST = "manifest.json"
IN_PROGRESS = ".in-progress"


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

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

    def begin_backup(self, backup_id: str) -> Path:
        """Claim a new backup folder (exclusively) and mark it in progress."""
        path = self.backup_dir(backup_id)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            raise RepositoryError(f"backup {backup_id} already exists in {self.root}") from None
        except OSError as exc:
            raise RepositoryError(f"cannot create {path}: {exc.strerror}") from None
        marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        atomic_write_bytes(path / IN_PROGRESS, json.dumps(marker).encode())
        fsync_dir(self.backups_dir)
        return path

    def finish_backup(self, backup_id: str, manifest: bytes) -> None:
        """Write the manifest last: from this moment on the backup exists."""
        path = self.backup_dir(backup_id)
        atomic_write_bytes(path / MANIFEST, manifest)
        (path / IN_PROGRESS).unlink(missing_ok=True)
        fsync_dir(path)

    def abandon_backup(self, backup_id: str) -> None:
        shutil.rmtree(self.backup_dir(backup_id), ignore_errors=True)

    @contextmanager
    def write_file(self, backup_id: str, name: str) -> Iterator[BinaryIO]:
        with atomic_file(self.backup_dir(backup_id) / name) as f:
            yield f

    def file_path(self, backup_id: str, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise RepositoryError(f"bad file name in manifest: {name!r}")
        return self.backup_dir(backup_id) / name

    def open_file(self, backup_id: str, name: str) -> BinaryIO:
        try:
            return open(self.file_path(backup_id, name), "rb")
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

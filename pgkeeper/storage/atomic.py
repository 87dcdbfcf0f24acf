"""The one atomic-write path: temp name in the same directory, fsync, rename, fsync directory.

Kept free of heavy imports: wal-push (PostgreSQL's archive_command) uses it.
"""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: wal-fetch's queue hits pay no ~10 ms
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import BinaryIO

FILE_MODE = 0o600


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    # Unique per writer, not just per process: two threads writing one path must not share it.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = FILE_MODE, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Write `path` all-or-nothing. On error the temp file is removed and `path` is untouched.

    With overwrite=False the final step is a link, so an existing file is never replaced
    (the caller gets FileExistsError and decides whether it is an identical duplicate).
    """
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    with atomic_file(path, mode) as f:
        f.write(data)


def sync_filesystem(path: Path | str) -> None:
    """Write back everything on the file system that holds `path`, and wait for it (syncfs(2)).

    A tree of new files (an unpacked base backup) costs one journal commit this way, where an
    fsync per file costs one each. Errors are reported as OSError (by Linux 5.8 and later). Where
    there is no syncfs, sync(2), which syncs every file system, is the fallback."""
    import ctypes  # only here: the WAL commands never sync a file system

    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)

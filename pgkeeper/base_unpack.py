"""A base backup unpacked into a data directory: every stored file checked against its sha256,
the tree owned by the server user and on disk before PostgreSQL is told about it.

Apart from the tasks that use it (tasks/recovery.py, tasks/basebackup.py) so that
`pgkeeper pitr`'s early start (pgkeeper/early_pitr.py) can unpack before Prefect is imported.
Nothing here imports Prefect.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import zstandard

from pgkeeper import pgtools
from pgkeeper.basestream import READ_CHUNK
from pgkeeper.errors import BadName, IntegrityError
from pgkeeper.storage.atomic import sync_filesystem
from pgkeeper.wal.setup import server_ids

if TYPE_CHECKING:
    from pgkeeper.manifest import Manifest, StoredFile
    from pgkeeper.storage.interface import Storage

# What a base backup may hold that a recovered server must not find.
LEFTOVERS = ("postmaster.pid", "postmaster.opts", "standby.signal")


def check_empty_target(dest: Path) -> None:
    """pitr recovers only into a new or empty directory."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadName(f"{dest} is not empty: pitr only recovers into a new or empty directory")


def unpack_cluster(storage: Storage, manifest: Manifest, dest: Path) -> None:
    """Unpack the base backup into `dest` (new or empty), owned by the server user and synced;
    on any failure `dest` is left as it was found (removed, or emptied)."""
    check_empty_target(dest)
    created = not dest.exists()
    pgtools.make_server_dir(dest)
    try:
        with writing_back(dest):
            unpack_backup(lambda f: storage.open_plain(manifest.backup_id, f), manifest.files, dest,
                          extract_as=pgtools.as_server_user())  # dest is the server user's (make_server_dir)
        for leftover in LEFTOVERS:
            (dest / leftover).unlink(missing_ok=True)
        (dest / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
        (dest / "log").mkdir(exist_ok=True)
        _chown_tree(dest)
        dest.chmod(0o700)
        sync_cluster_dir(dest)
    except BaseException:
        remove_unpacked(dest, created)
        raise


def remove_unpacked(dest: Path, created: bool) -> None:
    """What an unpack wrote into `dest` removed: the directory itself when it made it."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir() if dest.is_dir() else ():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _chown_tree(path: Path) -> None:
    ids = server_ids()
    if ids is None:
        return
    os.chown(path, *ids)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), *ids, follow_symlinks=False)


@contextlib.contextmanager
def writing_back(dest: Path, every: float = 0.5) -> Iterator[None]:
    """While the block runs, a thread syncs dest's file system over and over, so the unpacked
    files go to disk while the next ones are being decompressed (two processes busy on the CPU,
    the disk idle otherwise): the sync owed at the end (sync_cluster_dir) then finds little left.
    Its errors are left to that final sync, which reports them."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            try:
                sync_filesystem(dest)
            except OSError:
                return

    thread = threading.Thread(target=loop, name="pgkeeper-writeback", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def sync_cluster_dir(dest: Path) -> None:
    """Every unpacked file on disk before PostgreSQL is told about it: one syncfs per file system
    the cluster spans (data directory, pg_wal, tablespaces). GNU tar leaves the whole tree dirty in
    the page cache; PostgreSQL's start-up sync would otherwise fsync it one file (and one journal
    commit) at a time, seconds for a thousand files where one syncfs takes well under one."""
    tablespaces = sorted((dest / "pg_tblspc").iterdir()) if (dest / "pg_tblspc").is_dir() else []
    devices: set[int] = set()
    for path in (dest, dest / "pg_wal", *tablespaces):
        try:
            device = path.resolve().stat().st_dev
        except OSError:
            continue
        if device not in devices:
            devices.add(device)
            sync_filesystem(path.resolve())


def _member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # Tablespace links point at the source host's directories: tablespaces are unpacked in place
    # (pg_tblspc/<oid>/) instead. Everything else must stay inside `dest`.
    if member.name.startswith("pg_tblspc/") and member.issym():
        return None
    return tarfile.tar_filter(member, dest)


def unpack_backup(open_plain: Callable[[StoredFile], BinaryIO], files: list[StoredFile], dest: Path,
                  extract_as: list[str] | None = None) -> None:
    """Unpack base.tar.* (and tablespace tars) into `dest`, each checked against its sha256.

    With `extract_as` (a prefix such as pgtools.as_server_user(); [] for this user) a backup that
    is one base tar is extracted by GNU tar running as that user, fed by this process, which reads,
    checks and decompresses: two processes on two cores instead of one, and a user that cannot
    write a setuid-root file or outside what it owns. Otherwise Python's tarfile extracts with
    the `tar` filter.

    A mismatch raises IntegrityError after the fact: the caller must discard `dest`.
    """
    tars = sorted((f for f in files if ".tar" in f.name), key=lambda f: not f.name.startswith("base."))
    if not tars or not tars[0].name.startswith("base."):
        raise IntegrityError("the backup has no base.tar file")
    gnu_tar = shutil.which("tar") if extract_as is not None and len(tars) == 1 else None
    for f in tars:
        target = dest if f.name.startswith("base.") else dest / "pg_tblspc" / f.name.split(".")[0]
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open_plain(f) as hashed:
            if f.name.endswith(".zst"):
                stream = zstandard.ZstdDecompressor().stream_reader(hashed, read_across_frames=True)
            elif f.name.endswith(".gz"):
                import gzip

                stream = gzip.GzipFile(fileobj=hashed)  # type: ignore[arg-type]
            else:
                stream = hashed  # type: ignore[assignment]
            try:
                if gnu_tar:
                    _extract_with_tar(stream, target, [*(extract_as or []), gnu_tar], f.name)
                else:
                    with tarfile.open(fileobj=stream, mode="r|", bufsize=READ_CHUNK,  # type: ignore[call-overload]
                                      copybufsize=READ_CHUNK) as tf:
                        tf.extractall(target, filter=_member_filter)
                while hashed.read(READ_CHUNK):  # to the end, where the stored bytes are checked
                    pass
            except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
                raise IntegrityError(f"{f.name} cannot be unpacked: {exc}") from None


def _extract_with_tar(stream: BinaryIO, target: Path, tar: list[str], label: str) -> None:
    """Feed the decompressed tar to `tar -x` (GNU tar: leading '/' stripped, members with '..'
    refused, symlinks that could lead out extracted as placeholders until the end)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*tar, "-x", "-p", "--no-same-owner", "-f", "-", "-C", str(target)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, bufsize=0)
        try:
            assert proc.stdin is not None
            try:
                while chunk := stream.read(READ_CHUNK):
                    # stdin is unbuffered: a write into the pipe that a signal interrupts returns what
                    # it wrote so far, and the rest must follow, or tar sees a stream with a hole.
                    view = memoryview(chunk)
                    while view:
                        view = view[proc.stdin.write(view) or 0:]
            except BrokenPipeError:  # tar stopped reading: at the end-of-archive blocks, or failed
                pass
            proc.stdin.close()
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            err.seek(0)
            raise IntegrityError(f"{label} cannot be unpacked: tar: {pgtools.last_line(err.read())}")

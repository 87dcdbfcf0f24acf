"""unpack_backup's two ways (GNU tar fed by this process, Python's tarfile) give the same tree and
refuse the same things: a stored file that fails its sha256, a stream that is not a tar, and a
member that would land outside the data directory. Real files and the real `tar`, no server."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard

from pgkeeper.base_unpack import unpack_backup
from pgkeeper.errors import IntegrityError
from pgkeeper.manifest import StoredFile
from pgkeeper.storage.streams import CheckedReader

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")


def _tar(members: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), (modes or {}).get(name, 0o600)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _store(folder: Path, raw_tar: bytes) -> StoredFile:
    stored = zstandard.ZstdCompressor().compress(raw_tar)
    (folder / "base.tar.zst").write_bytes(stored)
    return StoredFile(name="base.tar.zst", size=len(stored), sha256=hashlib.sha256(stored).hexdigest())


def _opener(folder: Path):  # noqa: ANN202
    return lambda f: CheckedReader(open(folder / f.name, "rb"), f, f.name)


def _tree(root: Path) -> list[tuple[str, int, bytes]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mode & 0o7777, p.read_bytes() if p.is_file() else b"")
                  for p in root.rglob("*"))


@pytest.mark.parametrize("extract_as", [None, []], ids=["tarfile", "gnu-tar"])
def test_both_ways_unpack_the_same_tree(tmp_path: Path, extract_as: list[str] | None) -> None:
    members = {"PG_VERSION": b"15\n", "base/1/1259": os.urandom(3 * 2**20), "global/pg_control": b"c" * 8192}
    f = _store(tmp_path, _tar(members, {"PG_VERSION": 0o640}))
    dest = tmp_path / "data"
    unpack_backup(_opener(tmp_path), [f], dest, extract_as=extract_as)
    assert {name for name, _, _ in _tree(dest) if (dest / name).is_file()} == set(members)
    assert (dest / "base/1/1259").read_bytes() == members["base/1/1259"]
    assert (dest / "PG_VERSION").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("extract_as", [None, []], ids=["tarfile", "gnu-tar"])
def test_a_stored_file_that_fails_its_checksum_is_refused(tmp_path: Path, extract_as: list[str] | None) -> None:
    f = _store(tmp_path, _tar({"PG_VERSION": b"15\n", "base/1/1": os.urandom(2**20)}))
    f = f.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(IntegrityError):
        unpack_backup(_opener(tmp_path), [f], tmp_path / "data", extract_as=extract_as)


@pytest.mark.parametrize("extract_as", [None, []], ids=["tarfile", "gnu-tar"])
def test_a_stream_that_is_not_a_tar_is_refused(tmp_path: Path, extract_as: list[str] | None) -> None:
    f = _store(tmp_path, os.urandom(64 * 1024))
    with pytest.raises(IntegrityError, match="cannot be unpacked"):
        unpack_backup(_opener(tmp_path), [f], tmp_path / "data", extract_as=extract_as)


@pytest.mark.parametrize("extract_as", [None, []], ids=["tarfile", "gnu-tar"])
def test_a_member_leading_out_of_the_data_directory_is_refused(tmp_path: Path, extract_as: list[str] | None) -> None:
    f = _store(tmp_path, _tar({"PG_VERSION": b"15\n", "../escaped": b"x"}))
    with pytest.raises(IntegrityError, match="cannot be unpacked"):
        unpack_backup(_opener(tmp_path), [f], tmp_path / "data", extract_as=extract_as)
    assert not (tmp_path / "escaped").exists()


def test_signals_during_the_unpack_lose_no_byte(tmp_path: Path) -> None:
    """A signal that interrupts a write into tar's pipe makes the write partial; the rest must
    still reach tar (it once did not: tar read a stream with holes and stopped early, status 0)."""
    import signal

    # Zero pages (as in a table file) among random ones: a hole there reads as end-of-archive.
    members = {f"base/1/{n}": (os.urandom(2**20) if n % 2 else bytes(2**20)) for n in range(24)}
    members["PG_VERSION"] = b"15\n"
    f = _store(tmp_path, _tar(members))
    dest = tmp_path / "data"
    ticks = []
    previous = signal.signal(signal.SIGALRM, lambda *_: ticks.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        unpack_backup(_opener(tmp_path), [f], dest, extract_as=[])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ticks  # the unpack was interrupted
    assert {name: (dest / name).read_bytes() for name in members} == members

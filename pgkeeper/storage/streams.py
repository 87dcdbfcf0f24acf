"""Filters on the one byte path: every stored byte is counted and hashed on its way in or out.

pgBackRest's way (`src/common/io/filter/`): hashing (and encryption, when the repository
encrypts) is a filter on a write or a read, not a loop each caller writes again.
"""

from __future__ import annotations

import hashlib
from typing import Any, BinaryIO

from pgkeeper.errors import IntegrityError

CHUNK = 1 << 20


class HashingWriter:
    """A writable file that hashes and counts what passes into `out`."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


class HashingReader:
    """A readable file that hashes and counts what is read from `f`."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end, so trailing bytes count in the hash."""
        while self.read(CHUNK):
            pass

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> HashingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_digest(reader: HashingReader, size: int | None, sha256: str, label: str) -> None:
    """After a full read: the bytes were the manifest's, or IntegrityError naming `label`."""
    if size is not None and reader.size != size:
        raise IntegrityError(f"{label}: {reader.size} bytes stored, the manifest says {size}")
    if reader.sha256 != sha256:
        raise IntegrityError(f"{label}: sha256 mismatch (stored {reader.sha256[:16]}..., "
                             f"manifest {sha256[:16]}...)")


def sha256_of(stream: BinaryIO) -> tuple[str, int]:
    """(sha256, size) of the rest of `stream`."""
    reader = HashingReader(stream)
    reader.drain()
    return reader.sha256, reader.size


class CheckedReader(HashingReader):
    """A HashingReader that, when the end is read, insists on the manifest's sha256 and size."""

    def __init__(self, f: BinaryIO, file: Any, label: str) -> None:
        super().__init__(f)
        self.file = file
        self.label = label
        self.checked = False

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if (not data or n < 0) and not self.checked:
            self.checked = True
            check_digest(self, self.file.size, self.file.sha256, self.label)
        return data

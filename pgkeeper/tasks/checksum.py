"""Read a stored file back: sha256 of the stored bytes, decompressed on the same pass."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

from pgkeeper import codec
from pgkeeper.errors import IntegrityError


class _HashingReader:
    """A file wrapper that hashes and counts every byte read through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


def checked_chunks(stream: BinaryIO, compression: str, expected_sha256: str, label: str,
                   sink: Callable[[bytes], None]) -> int:
    """Decompress `stream` into `sink`, then insist its sha256 is the recorded one.

    Returns the decompressed size. Any mismatch or corruption raises IntegrityError naming
    `label`; the caller must treat whatever reached `sink` as untrusted until we return.
    """
    reader = _HashingReader(stream)
    raw = 0
    try:
        for chunk in codec.decompressed_chunks(reader, compression):  # type: ignore[arg-type]
            raw += len(chunk)
            sink(chunk)
    except ValueError as exc:
        raise IntegrityError(f"{label}: {exc}") from None
    while reader.read(codec.CHUNK):  # trailing bytes after the compressed stream still count
        pass
    actual = reader.digest.hexdigest()
    if actual != expected_sha256:
        raise IntegrityError(f"{label}: sha256 mismatch (stored {actual[:16]}..., "
                             f"manifest {expected_sha256[:16]}...)")
    return raw


"""Read a stored file back: decompressed, with the storage's own check of the stored bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from pgkeeper import codec
from pgkeeper.errors import IntegrityError
from pgkeeper.storage.streams import CHUNK


def checked_chunks(stream: BinaryIO, compression: str, label: str, sink: Callable[[bytes], None]) -> int:
    """Decompress `stream` (from `Storage.open_plain`, which checks the stored bytes against the
    manifest when its end is read) into `sink`; returns the decompressed size.

    Any mismatch or corruption raises IntegrityError naming `label`; the caller must treat
    whatever reached `sink` as untrusted until we return.
    """
    raw = 0
    try:
        for chunk in codec.decompressed_chunks(stream, compression):
            raw += len(chunk)
            sink(chunk)
    except ValueError as exc:
        raise IntegrityError(f"{label}: {exc}") from None
    while stream.read(CHUNK):  # trailing bytes after the compressed stream still count
        pass
    return raw

"""Stream compression: zstd (default) or gzip (the old scripts' .gz), chunk in, chunk out."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

import zstandard

CHUNK = 1 << 20
SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def compressor(kind: str, level: int, threads: int = 0) -> Compressor:
    """`threads` > 0: zstd compresses on that many threads of its own (gzip has no threads)."""
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=level, threads=threads).compressobj(size=-1)
    if kind == "gzip":
        return zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a real .gz stream
    raise ValueError(f"unknown compression {kind!r}")


def decompressed_chunks(stream: BinaryIO, kind: str) -> Iterator[bytes]:
    """Decompress `stream` in pieces of at most CHUNK bytes; corruption raises ValueError.

    A truncated zstd stream just ends early: checked_chunks() catches it by size and sha256.
    """
    if kind == "none":
        while chunk := stream.read(CHUNK):
            yield chunk
        return
    if kind == "gzip":
        d = zlib.decompressobj(31)
        while chunk := stream.read(CHUNK):
            try:
                while chunk:  # bounded output: memory stays flat however well the data compressed
                    yield d.decompress(chunk, CHUNK)
                    chunk = d.unconsumed_tail
            except zlib.error as exc:
                raise ValueError(f"gzip data is corrupt: {exc}") from None
        if not d.eof:
            raise ValueError("gzip data is truncated")
        return
    if kind == "zstd":
        # A stream reader bounds each piece to CHUNK, so memory stays flat however well the data
        # compressed (decompressobj returns a block's whole output at once: 200 MB of spaces is a
        # few KB of zstd). It does not notice a truncated stream: callers check size and sha256.
        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_size=CHUNK, read_across_frames=True)
        while True:
            try:
                out = reader.read(CHUNK)
            except zstandard.ZstdError as exc:
                raise ValueError(f"zstd data is corrupt: {exc}") from None
            if not out:
                return
            yield out
    raise ValueError(f"unknown compression {kind!r}")


def checked_chunks(stream: BinaryIO, kind: str, label: str, sink: Callable[[bytes], None]) -> int:
    """Decompress `stream` (from `Storage.open_plain`, which checks the stored bytes against the
    manifest when its end is read) into `sink`; returns the decompressed size.

    Any mismatch or corruption raises IntegrityError naming `label`; the caller must treat
    whatever reached `sink` as untrusted until we return.
    """
    from pgkeeper.errors import IntegrityError

    raw = 0
    try:
        for chunk in decompressed_chunks(stream, kind):
            raw += len(chunk)
            sink(chunk)
    except ValueError as exc:
        raise IntegrityError(f"{label}: {exc}") from None
    while stream.read(CHUNK):  # trailing bytes after the compressed stream still count
        pass
    return raw

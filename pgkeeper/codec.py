"""Stream compression: zstd (default) or gzip (the old scripts' .gz), chunk in, chunk out."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import BinaryIO, Protocol

import zstandard

CHUNK = 1 << 20
SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def compressor(kind: str, level: int) -> Compressor:
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=level).compressobj(size=-1)
    if kind == "gzip":
        return zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a real .gz stream
    raise ValueError(f"unknown compression {kind!r}")


def decompressed_chunks(stream: BinaryIO, kind: str) -> Iterator[bytes]:
    """Decompress `stream` chunk by chunk; a corrupt or truncated stream raises ValueError."""
    if kind == "none":
        while chunk := stream.read(CHUNK):
            yield chunk
        return
    if kind == "gzip":
        d = zlib.decompressobj(31)
        while chunk := stream.read(CHUNK):
            try:
                yield d.decompress(chunk)
            except zlib.error as exc:
                raise ValueError(f"gzip data is corrupt: {exc}") from None
        if not d.eof:
            raise ValueError("gzip data is truncated")
        return
    if kind == "zstd":
        d = zstandard.ZstdDecompressor().decompressobj()
        while chunk := stream.read(CHUNK):
            try:
                out = d.decompress(chunk)
            except zstandard.ZstdError as exc:
                raise ValueError(f"zstd data is corrupt: {exc}") from None
            if out:
                yield out
        if not d.eof:
            raise ValueError("zstd data is truncated")
        return
    raise ValueError(f"unknown compression {kind!r}")

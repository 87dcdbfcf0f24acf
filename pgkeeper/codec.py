"""Stream compression: zstd (default) or gzip (the old scripts' .gz), chunk in, chunk out."""

from __future__ import annotations

import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

import zstandard

CHUNK = 1 << 20
SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def compressor(kind: str, level: int, threads: int = 0, checksum: bool = False) -> Compressor:
    """`threads` > 0: zstd compresses on that many threads of its own (gzip has no threads).
    `checksum`: each zstd frame ends with the XXH64 of its content, which every zstd
    decompression checks (as the zstd command line writes by default; gzip always has its CRC)."""
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=checksum).compressobj(size=-1)
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


class StreamCheck:
    """Decompresses a zstd stream on a thread of its own while it is being written, so that the
    proof that what was stored decompresses (and, with the frame checksum, to exactly what was
    compressed) is ready when the last piece is, not one more pass over the file afterwards.

    feed() takes each piece as it goes to storage, in order (the caller hashes the same bytes on
    their way in); finish(raw) waits for the thread and returns the decompressed size, or raises
    ValueError (corrupt, checksum mismatch, or not the `raw` bytes that were compressed: a
    truncated stream). The decompression runs in zstd's stream writer, which leaves the
    interpreter lock to the loop reading pg_dump (decompressobj keeps it: that loop slowed by a
    third); the queue is bounded, so memory stays flat (each piece decompresses to at most a few
    MB: the compressor's window)."""

    QUEUE_PIECES = 64

    def __init__(self) -> None:
        self._pieces: queue.Queue[bytes | None] = queue.Queue(self.QUEUE_PIECES)
        self._size = 0
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="stream-check", daemon=True)
        self._thread.start()

    def feed(self, piece: bytes) -> None:
        if piece and self._error is None:
            self._pieces.put(piece)

    def finish(self, raw: int) -> int:
        self._pieces.put(None)
        self._thread.join()
        if self._error is None and self._size != raw:
            self._error = f"zstd data is truncated: it decompressed to {self._size} of the {raw} bytes compressed"
        if self._error is not None:
            raise ValueError(self._error)
        return self._size

    def write(self, data: bytes) -> int:  # the stream writer's output: counted, not kept
        self._size += len(data)
        return len(data)

    def _run(self) -> None:
        writer = zstandard.ZstdDecompressor().stream_writer(self, write_size=CHUNK)
        while (piece := self._pieces.get()) is not None:
            if self._error is not None:
                continue  # drain: the writer must never block on a full queue
            try:
                writer.write(piece)
            except zstandard.ZstdError as exc:
                self._error = f"zstd data is corrupt: {exc}"
        if self._error is None:
            try:
                writer.flush()
            except zstandard.ZstdError as exc:
                self._error = f"zstd data is corrupt: {exc}"

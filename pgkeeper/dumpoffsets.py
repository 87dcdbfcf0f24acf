"""Data offsets for a custom-format archive that pg_dump wrote to a pipe.

pg_dump -Fc writes its table of contents first; written to a file it seeks back at the end and
rewrites the TOC with the position of every data block (pg_backup_custom.c, _CloseArchive).
Written to a pipe, as every pgkeeper dump is, it cannot: each entry with data keeps
K_OFFSET_POS_NOT_SET, and each `pg_restore -j` worker then reads through the blocks before its
table's to find it. `add_data_offsets` walks the data blocks of such an archive once and writes
their positions into the TOC's offset fields, in place: each field is fixed-width (a flag byte
and `offSize` bytes), so the file's length and every other byte stay as they were, and the TOC is
then the one pg_dump itself writes when it can seek.

Only for a work file whose checksum is already proven: the stored object is what was verified,
this is a derived copy. A wrong offset cannot restore wrong data quietly: pg_restore reads the
block header at the offset and stops on a block id other than the entry's (`found unexpected
block ID`); the content proof compares what was restored with the archive besides.

Finding the blocks (format of PostgreSQL 9.x-17, archive versions 1.12-1.16): after the TOC come
the blocks, each a type byte (BLK_DATA 1, BLK_BLOBS 3), the entry's dump id (ReadInt) and its
data as chunks, each a ReadInt length and that many bytes, ending with a zero length; a BLOBS
block is a sequence of (ReadInt oid, chunks) ending with oid 0. A ReadInt is a sign byte and
intSize bytes, least significant first. With -Z0 pg_dump writes one chunk per row, so walking a
table's chunks in Python is millions of steps; for an uncompressed BLK_DATA block the end is
found instead as the first run of 1 + intSize zero bytes: the chunks are COPY (or INSERT) text,
which never holds a NUL byte (PostgreSQL text cannot), and a non-zero length has at least one
non-zero byte, so the only such run is the zero length that ends the block. The next block's
header must follow it (or the end of the file), which is checked. Large objects and compressed
data may hold any byte: their chunks are walked one by one. The tests exercise archive version
1.14 (PostgreSQL 15's pg_dump, the one pgkeeper runs); the other versions' fields are read as
pg_backup_archiver.c's ReadHead/ReadToc read them, and an unset offset field that is not all
zero (a TOC misread) leaves the file untouched.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
BLK_DATA = 1
BLK_BLOBS = 3
K_OFFSET_POS_NOT_SET = 1
K_OFFSET_POS_SET = 2
MIN_VERSION = (1, 12)  # PostgreSQL 9.0's pg_dump; older archives are left as they are
MAX_VERSION = (1, 16)
WINDOW = 64 << 20  # bytes searched per find, and released from the mapping at a time


class NotPatchable(Exception):
    """The archive is not one this module understands; it is left untouched (internal)."""


@dataclass
class Patched:
    entries: int  # TOC entries given an offset (one per data block found)


class _Reader:
    """Reads the header and TOC fields of an archive held in a buffer."""

    def __init__(self, buf) -> None:
        self.buf = buf
        self.pos = 0
        self.int_size = 4
        self.off_size = 8

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise NotPatchable("archive ends inside its table of contents")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def int(self) -> int:
        end = self.pos + 1 + self.int_size
        if end > len(self.buf):
            raise NotPatchable("archive ends inside its table of contents")
        sign = self.buf[self.pos]
        value = int.from_bytes(self.buf[self.pos + 1:end], "little")
        self.pos = end
        return -value if sign else value

    def skip_str(self) -> None:
        n = self.int()
        if n > 0:
            self.pos += n


def _read_head(r: _Reader) -> tuple[tuple[int, int], int]:
    """The archive's version and its compression (0 = none), position after the header."""
    if bytes(r.buf[:5]) != MAGIC:
        raise NotPatchable("not a pg_dump archive")
    r.pos = 5
    version = (r.byte(), r.byte())
    r.byte()  # revision
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise NotPatchable(f"archive version {version} not handled")
    r.int_size = r.byte()
    r.off_size = r.byte()
    if r.byte() != FORMAT_CUSTOM:
        raise NotPatchable("not a custom-format archive")
    compression = r.byte() if version >= (1, 15) else r.int()
    for _ in range(7):  # creation time
        r.int()
    r.skip_str()  # database name
    r.skip_str()  # server version
    r.skip_str()  # pg_dump version
    return version, compression


def _read_toc(r: _Reader, version: tuple[int, int]) -> tuple[dict[int, int], int]:
    """{dump id: position of its offset field} for entries whose data offset is not set; and the
    position where the TOC ends (the first data block)."""
    unset: dict[int, int] = {}
    for _ in range(r.int()):
        dump_id = r.int()
        r.int()  # had dumper
        r.skip_str()  # table oid
        r.skip_str()  # oid
        r.skip_str()  # tag
        r.skip_str()  # desc
        r.int()  # section
        r.skip_str()  # definition
        r.skip_str()  # drop statement
        r.skip_str()  # copy statement
        r.skip_str()  # namespace
        r.skip_str()  # tablespace
        if version >= (1, 14):
            r.skip_str()  # table access method
        if version >= (1, 16):
            r.int()  # relkind
        r.skip_str()  # owner
        r.skip_str()  # "false" (with oids)
        while (n := r.int()) >= 0:  # dependencies: strings, ended by a NULL one (length -1)
            r.pos += n
        field = r.pos
        flag = r.byte()
        r.pos += r.off_size
        if flag == K_OFFSET_POS_NOT_SET:
            # pg_dump leaves the offset itself zero: anything else means the TOC was misread
            if any(r.buf[field + 1:r.pos]):
                raise NotPatchable(f"entry {dump_id}: offset field not as pg_dump leaves it")
            unset[dump_id] = field
    if r.pos > len(r.buf):
        raise NotPatchable("archive ends inside its table of contents")
    return unset, r.pos


def _block_offsets(buf, pos: int, int_size: int, compressed: bool) -> dict[int, int]:
    """{dump id: position of its block} for every data block from `pos` to the end of `buf`."""
    size = len(buf)
    step = 1 + int_size
    terminator = b"\0" * step

    def read_int(at: int) -> int:
        if at + step > size:
            raise NotPatchable("archive ends inside a data block")
        value = int.from_bytes(buf[at + 1:at + step], "little")
        return -value if buf[at] else value

    def skip_chunks(at: int) -> int:
        while (n := read_int(at)) != 0:
            if n < 0:
                raise NotPatchable("negative chunk length")
            at += step + n
            release(at)
        return at + step

    released = 0

    def release(upto: int) -> None:
        # The pages read so far leave this process's mapping (they stay in the page cache), so
        # its resident size does not grow with the archive.
        nonlocal released
        upto -= upto % mmap.PAGESIZE
        if upto - released >= WINDOW:
            buf.madvise(mmap.MADV_DONTNEED, released, upto - released)
            released = upto

    def block_end(at: int) -> int:
        while (found_at := buf.find(terminator, at, min(at + WINDOW, size))) < 0:
            if at + WINDOW >= size:
                raise NotPatchable("archive ends inside a data block")
            at += WINDOW - (step - 1)  # a run may straddle two windows
            release(at)
        return found_at

    found: dict[int, int] = {}
    while pos < size:
        start = pos
        kind = buf[pos]
        dump_id = read_int(pos + 1)
        pos += 1 + step
        if kind == BLK_DATA and not compressed:
            pos = block_end(pos) + step
        elif kind == BLK_DATA:
            pos = skip_chunks(pos)
        elif kind == BLK_BLOBS:
            while read_int(pos) != 0:  # each large object: its oid, then its chunks
                pos = skip_chunks(pos + step)
            pos += step
        else:
            raise NotPatchable(f"unknown block type {kind} at {start}")
        if dump_id in found or pos > size:
            raise NotPatchable(f"block {dump_id} found twice or cut short")
        found[dump_id] = start
        release(pos)
    return found


def add_data_offsets(path: Path) -> Patched | None:
    """Write the data blocks' offsets into the TOC of the custom-format archive at `path`, in
    place. None (the file untouched) when the archive is not one whose blocks can all be placed:
    another format, a version not handled, offsets already set, or an inconsistency (a block id
    the TOC does not expect, a block cut short). pg_restore then reads it as it always did."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 64:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                r = _Reader(buf)
                version, compression = _read_head(r)
                unset, toc_end = _read_toc(r, version)
                if not unset:
                    return None
                blocks = _block_offsets(buf, toc_end, r.int_size, compression != 0)
            except NotPatchable:
                return None
        if not set(blocks) <= set(unset):
            return None
        if any(offset >= 1 << (8 * r.off_size - 1) for offset in blocks.values()):
            return None
        for dump_id, offset in blocks.items():
            os.pwrite(f.fileno(), bytes([K_OFFSET_POS_SET]) + offset.to_bytes(r.off_size, "little"),
                      unset[dump_id])
    return Patched(entries=len(blocks))

"""Check a base backup's tar stream against PostgreSQL's backup_manifest while it passes by.

`pg_basebackup -Ft -D -` writes one tar to stdout with backup_manifest injected as its last
member. `TarChecker.feed()` takes that stream chunk by chunk and returns what to store (the
same bytes without the backup_manifest member, which is stored as a file of its own); on the
way it takes the CRC-32C of every regular file (the checksum basebackup_tool.py asks
PostgreSQL for). `check_against_manifest()` then does what pg_verifybackup does with the files
of a plain directory: the manifest's own checksum (SHA-256), and every file listed with its size
and CRC-32C present, and nothing else. It does not parse the WAL (pg_waldump does
that, see tasks/basebackup.py), and the tar is hashed before compression: a full
`pg_verifybackup` of an unpacked copy is what the PITR drill adds.
"""

from __future__ import annotations

import hashlib
import json

import crc32c

from pgkeeper.basebackup_tool import MANIFEST_CHECKSUMS
from pgkeeper.errors import IntegrityError

BLOCK = 512
PG_MANIFEST = "backup_manifest"
# pg_verifybackup's own ignore list (files a restore may add or change), plus the WAL directory.
IGNORED = ("backup_manifest", "postgresql.auto.conf", "recovery.signal", "standby.signal")
REGULAR = (b"0", b"\0", b"7")


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256 (GNU), for members over 8 GB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def crc_hex_forms(value: int) -> tuple[str, str]:
    """How backup_manifest may write a CRC-32C: PostgreSQL hex-encodes the value's four bytes as
    they lie in the server's memory, so little-endian on almost every server, big-endian on a few."""
    return value.to_bytes(4, "little").hex(), value.to_bytes(4, "big").hex()


def _pax_path(data: bytes) -> str | None:
    for record in data.split(b"\n"):
        _, _, kv = record.partition(b" ")
        key, _, value = kv.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
    return None


class TarChecker:
    """A streaming tar splitter: hashes members, holds back backup_manifest."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int]] = {}  # path -> (size, CRC-32C)
        self.manifest = bytearray()
        self.raw_size = 0  # bytes passed on
        self._header = bytearray()  # a header being collected across chunks
        self._left = 0  # data + padding bytes of the current member still to come
        self._data_left = 0  # of which data
        self._crc: int | None = None  # of the current regular member's data so far
        self._name = ""
        self._size = 0
        self._kind = b"0"
        self._divert = False  # the current member is backup_manifest
        self._long_name: str | None = None  # from a GNU 'L' or pax 'x' member, for the next one
        self._meta: bytearray | None = None  # collecting such a member's data
        self._ended = False

    def feed(self, chunk: bytes | memoryview) -> list[memoryview]:
        """The parts of `chunk` to store, in order (everything but backup_manifest's member; the
        bytes of a header cut by the chunk's end come with the next chunk)."""
        mv = memoryview(chunk)
        out: list[memoryview] = []
        start, pos, n = 0, 0, len(mv)
        while pos < n and not self._ended:
            if self._left:
                take = min(self._left, n - pos)
                data = min(self._data_left, take)
                if data:
                    part = mv[pos:pos + data]
                    if self._crc is not None:
                        self._crc = crc32c.crc32c(part, self._crc)
                    if self._meta is not None:
                        self._meta += part
                    if self._divert:
                        self.manifest += part
                    self._data_left -= data
                if self._divert:
                    if pos > start:
                        out.append(mv[start:pos])
                    start = pos + take
                pos += take
                self._left -= take
                if not self._left:
                    self._member_done()
                continue
            header_start = pos
            piece = mv[pos:pos + BLOCK - len(self._header)]
            held = bytes(self._header)  # this header's bytes from earlier chunks, not passed on yet
            self._header += piece
            pos += len(piece)
            if len(self._header) < BLOCK:  # cut by the chunk's end: hold it back
                if header_start > start:
                    out.append(mv[start:header_start])
                start = n
                break
            header = bytes(self._header)
            self._header.clear()
            self._begin(header)
            if self._divert:  # backup_manifest's header is not stored either
                if header_start > start:
                    out.append(mv[start:header_start])
                start = pos
            elif held:
                out.append(memoryview(held))
        if n > start:
            out.append(mv[start:n])
        self.raw_size += sum(len(p) for p in out)
        return out

    def _begin(self, header: bytes) -> None:
        if header == bytes(BLOCK):  # end-of-archive: the rest is trailer
            self._ended = True
            return
        kind = header[156:157]
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if prefix:
                name = f"{prefix}/{name}"
        if self._long_name is not None and kind not in (b"L", b"x", b"K"):
            name, self._long_name = self._long_name, None
        size = _octal(header[124:136])
        self._name = name[2:] if name.startswith("./") else name
        self._size = size
        self._data_left = size
        self._left = size + (-size % BLOCK)
        self._divert = self._name == PG_MANIFEST and kind in REGULAR
        self._crc = 0 if kind in REGULAR and not self._divert else None
        self._meta = bytearray() if kind in (b"L", b"x") else None
        self._kind = kind
        if not self._left:
            self._member_done()

    def _member_done(self) -> None:
        if self._crc is not None:
            self.files[self._name] = (self._size, self._crc)
            self._crc = None
        if self._meta is not None:
            if self._kind == b"L":
                self._long_name = bytes(self._meta).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                self._long_name = _pax_path(bytes(self._meta))
            self._meta = None
        self._divert = False

    @property
    def ended(self) -> bool:
        return self._ended


def manifest_checksum_ok(data: bytes) -> bool:
    """The manifest's own SHA256: over everything up to the newline before its last line."""
    body = data.rstrip(b"\n")
    cut = body.rfind(b"\n")
    if cut < 0:
        return False
    try:
        last = json.loads(b"{" + body[cut + 1:].rstrip(b"}") + b"}")
    except ValueError:
        return False
    return hashlib.sha256(data[:cut + 1]).hexdigest() == last.get("Manifest-Checksum")


def check_against_manifest(checker: TarChecker) -> int:
    """Raise IntegrityError unless the streamed files are exactly those of backup_manifest, with
    its sizes and CRC-32C checksums; how many files were checked."""
    if not checker.ended:
        raise IntegrityError("the base backup's tar stream ended before its end-of-archive marker")
    if not checker.manifest:
        raise IntegrityError("the base backup's tar stream has no backup_manifest")
    raw = bytes(checker.manifest)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise IntegrityError(f"backup_manifest is not valid JSON: {exc}") from None
    if not manifest_checksum_ok(raw):
        raise IntegrityError("backup_manifest does not match its own checksum")
    seen = dict(checker.files)
    for entry in manifest.get("Files", []):
        path = entry["Path"]
        got = seen.pop(path, None)
        if got is None:
            raise IntegrityError(f"{path} is listed in backup_manifest but not in the backup")
        if got[0] != entry["Size"]:
            raise IntegrityError(f"{path} has size {got[0]} in the backup, {entry['Size']} in backup_manifest")
        if entry.get("Checksum-Algorithm") != MANIFEST_CHECKSUMS:
            raise IntegrityError(f"backup_manifest has no {MANIFEST_CHECKSUMS} checksum for {path}")
        if entry["Checksum"] not in crc_hex_forms(got[1]):
            raise IntegrityError(f"{path}: checksum mismatch against backup_manifest")
    extra = [p for p in seen if p not in IGNORED and not p.startswith("pg_wal/")]
    if extra:
        raise IntegrityError(f"{extra[0]} is in the backup but not in backup_manifest")
    return len(manifest.get("Files", []))

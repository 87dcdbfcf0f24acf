"""Which cluster a WAL archive belongs to (pgBackRest's archive.info, WAL-G's system-id check).

One cluster per repository: the repository *is* the namespace. Locally that is the
repository directory; in S3 it is the repository's prefix (the S3Bucket's bucket_folder), so
several clusters share one bucket by giving each its own prefix, as pgBackRest gives each
its own stanza. We chose this over a stanza sub-directory inside a repository because the
layout (<repo>/backups, <repo>/wal, <prefix>/backups, <prefix>/wal) and every reader of it
stay as they are, and a restore on a new machine needs nothing but the prefix it already
has. The record lives beside the WAL it describes:

    <repo>/wal/archive.json            <prefix>/wal/archive.json in S3
    {"system_identifier": "7441...", "pg_major": 15, "wal_segment_size": 16777216}

written once (by the first wal-push, base backup or wal-ship) and never rewritten. wal-push
reads the identifier from each segment's own long page header, so a segment of another
cluster (a re-initialised server pointed at the same repository) is refused before it is
stored, naming both identifiers.

Light imports only: this runs inside archive_command.
"""

from __future__ import annotations

import json
import os

from pgkeeper.errors import ForeignCluster, NotWalSegment, PgkeeperError

IDENTITY_FILE = "archive.json"
# XLogLongPageHeaderData (access/xlog_internal.h): xlp_magic u16 @0, xlp_info u16 @2, xlp_tli u32 @4,
# xlp_pageaddr u64 @8, xlp_rem_len u32 @16, padding to 24, xlp_sysid u64 @24, xlp_seg_size u32 @32,
# xlp_xlog_blcksz u32 @36. Stored in the server's byte order; ours is the same machine's.
HEADER_BYTES = 40
XLP_LONG_HEADER = 0x0002
# XLOG_PAGE_MAGIC per major version: the page format changes with every major release.
PAGE_MAGIC = {0xD101: 12, 0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17}


class ArchiveIdentity:
    """The cluster an archive belongs to. A plain class: dataclasses cost wal-push ~5 ms."""

    __slots__ = ("system_identifier", "pg_major", "wal_segment_size")

    def __init__(self, system_identifier: str, pg_major: int, wal_segment_size: int) -> None:
        self.system_identifier = str(system_identifier)
        self.pg_major = int(pg_major)
        self.wal_segment_size = int(wal_segment_size)

    def as_dict(self) -> dict:
        return {"system_identifier": self.system_identifier, "pg_major": self.pg_major,
                "wal_segment_size": self.wal_segment_size}

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ArchiveIdentity:
        try:
            d = json.loads(data)
            return cls(d["system_identifier"], d["pg_major"], d["wal_segment_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PgkeeperError(f"the archive identity {where} is unreadable: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchiveIdentity) and self.as_dict() == other.as_dict()

    def describe(self) -> str:
        return (f"cluster {self.system_identifier} (PostgreSQL {self.pg_major}, "
                f"{self.wal_segment_size // (1024 * 1024)} MB segments)")

    def mismatch(self, other: ArchiveIdentity) -> str | None:
        """What differs between the archive (self) and `other`, or None."""
        if other.system_identifier != self.system_identifier:
            return f"system identifier {other.system_identifier}, the archive's is {self.system_identifier}"
        if other.pg_major != self.pg_major:
            return f"PostgreSQL {other.pg_major}, the archive's is PostgreSQL {self.pg_major}"
        if other.wal_segment_size != self.wal_segment_size:
            return f"WAL segment size {other.wal_segment_size}, the archive's is {self.wal_segment_size}"
        return None


def major_of(server_version: str) -> int:
    """15 from '15.8 (Debian 15.8-1)'."""
    return int(server_version.split(".")[0].split()[0])


def parse_header(head: bytes, name: str) -> ArchiveIdentity:
    """The identity in a segment's first page, checked against the segment's own name."""
    if len(head) < HEADER_BYTES:
        raise NotWalSegment(f"{name} is too short to be a WAL segment ({len(head)} bytes)")
    magic = int.from_bytes(head[0:2], "little")
    info = int.from_bytes(head[2:4], "little")
    major = PAGE_MAGIC.get(magic)
    if major is None or not info & XLP_LONG_HEADER:
        raise NotWalSegment(f"{name} does not start with a WAL page header (magic 0x{magic:04X}): refusing it")
    tli = int.from_bytes(head[4:8], "little")
    pageaddr = int.from_bytes(head[8:16], "little")
    sysid = int.from_bytes(head[24:32], "little")
    seg_size = int.from_bytes(head[32:36], "little")
    if seg_size <= 0 or seg_size & (seg_size - 1) or pageaddr % seg_size:
        raise NotWalSegment(f"{name} has a malformed WAL page header (segment size {seg_size}): refusing it")
    per_log = 0x100000000 // seg_size
    segno = pageaddr // seg_size
    expected = f"{tli:08X}{segno // per_log:08X}{segno % per_log:08X}"
    if name[:24] != expected:
        raise NotWalSegment(f"{name} holds the WAL of segment {expected}: refusing it under another name")
    return ArchiveIdentity(str(sysid), major, seg_size)


def read_segment_identity(path: str, name: str) -> ArchiveIdentity:
    """Read the 40 header bytes (from the page cache: PostgreSQL just wrote the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.pread(fd, HEADER_BYTES, 0)
    finally:
        os.close(fd)
    return parse_header(head, name)


def identity_path(spool: str) -> str:
    return os.path.join(spool, IDENTITY_FILE)


def load(spool: str) -> ArchiveIdentity | None:
    path = identity_path(spool)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return ArchiveIdentity.from_json(data, path)


def record(spool: str, found: ArchiveIdentity) -> ArchiveIdentity:
    """The archive's identity: `found` if the archive had none yet (then written, never
    replaced: a concurrent writer of another cluster loses the race and is compared)."""
    from pathlib import Path

    from pgkeeper.storage.atomic import atomic_file

    existing = load(spool)
    if existing is not None:
        return existing
    os.makedirs(spool, mode=0o700, exist_ok=True)
    try:
        with atomic_file(Path(identity_path(spool)), mode=0o644, overwrite=False) as f:
            f.write(found.to_json())
    except FileExistsError:
        return load(spool) or found
    return found


class SegmentChecker:
    """Per wal-push process: the archive's identity read once, each segment's header compared."""

    def __init__(self, spool: str) -> None:
        self.spool = spool
        self.archive: ArchiveIdentity | None = load(spool)

    def __call__(self, name: str, path: str) -> None:
        if len(name) == 16 or name.endswith(".backup"):
            return  # timeline history and backup history files are text without a page header
        found = read_segment_identity(path, name)
        if self.archive is None:
            self.archive = record(self.spool, found)
        why = self.archive.mismatch(found)
        if why:
            raise ForeignCluster(f"{name} is from another cluster ({why}) in {self.spool}: refused, "
                                 "the archive is unchanged (a re-initialised or other cluster needs its own "
                                 "repository or prefix)")


def check_remote(archive: ArchiveIdentity, remote: object) -> str:
    """Compare the bucket's record (an S3WalStore) with the local archive's; write it if the
    bucket has none yet. Returns what was done; raises ForeignCluster on a mismatch."""
    data = remote.read_identity()  # type: ignore[attr-defined]
    where = remote.describe()  # type: ignore[attr-defined]
    if data is None:
        remote.write_identity(archive.to_json())  # type: ignore[attr-defined]
        return f"{where} now records {archive.describe()}"
    theirs = ArchiveIdentity.from_json(data, where)
    why = theirs.mismatch(archive)
    if why:
        raise ForeignCluster(f"{where} belongs to {theirs.describe()}, this archive to {archive.describe()} "
                             f"({why}): refused, nothing changed; give each cluster its own prefix")
    return f"{where} belongs to {archive.describe()}"


def check_backup(spool: str, system_identifier: str | None, server_version: str,
                 wal_segment_size: int | None, what: str, claim: bool) -> ArchiveIdentity | None:
    """Refuse a backup of another cluster than the repository's. A base backup (`claim`)
    records the identity when the repository has none yet; a logical backup only compares
    (a repository of dumps alone, e.g. the fleet's, belongs to no cluster)."""
    if not system_identifier:
        return load(spool)
    archive = load(spool)
    if archive is None:
        # Only into an existing spool: one created here (as root, 0700) would lock wal-push out.
        if not claim or not wal_segment_size or not os.path.isdir(spool):
            return None
        archive = record(spool, ArchiveIdentity(system_identifier, major_of(server_version), wal_segment_size))
    if archive.system_identifier != str(system_identifier):
        raise ForeignCluster(f"{what} is of cluster {system_identifier}, but the repository ({spool}) belongs to "
                             f"{archive.describe()}: refused, nothing written; use a repository or prefix "
                             "of its own for this cluster")
    if archive.pg_major != major_of(server_version):
        raise ForeignCluster(f"{what} is of PostgreSQL {major_of(server_version)}, but the repository ({spool}) "
                             f"belongs to {archive.describe()}: refused (a major upgrade needs a new repository)")
    return archive

"""Names of WAL files and of the objects that hold them in the archive.

An archived file is stored as  wal/<dir>/<walfile>-<sha256 of the raw file>.zst  where <dir> is
the first 16 characters of a segment name (timeline + log: at most 256 segments a directory) or
`history` for timeline history files. The checksum in the name makes a duplicate push a
listing of `<walfile>-` and lets wal-fetch check what it got without a second object.
"""

from __future__ import annotations

import re

SUFFIX = ".zst"
HISTORY_DIR = "history"
# 000000010000000A000000FF, optionally .partial or .<offset>.backup; 00000002.history
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial|\.[0-9A-F]{8}\.backup)?$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
_OBJECT = re.compile(r"^(?P<wal>[0-9A-F.a-z]+)-(?P<sha>[0-9a-f]{64})\.zst$")
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024


class BadWalName(ValueError):
    pass


def check_wal_name(name: str) -> str:
    """A name PostgreSQL gives to archived files; anything else (paths, '..') is refused."""
    if _SEGMENT.match(name) or _HISTORY.match(name):
        return name
    raise BadWalName(f"{name!r} is not a WAL segment, .partial, .backup or .history file name")


def is_history(name: str) -> bool:
    return bool(_HISTORY.match(name))


def wal_dir(name: str) -> str:
    return HISTORY_DIR if is_history(name) else name[:16]


def object_name(name: str, sha256: str) -> str:
    return f"{name}-{sha256}{SUFFIX}"


def object_key(name: str, sha256: str) -> str:
    """Path of the object below the wal/ prefix."""
    return f"{wal_dir(name)}/{object_name(name, sha256)}"


def parse_object_name(obj: str) -> tuple[str, str] | None:
    """(wal file name, sha256) of a stored object's base name, or None if it is not one."""
    m = _OBJECT.match(obj)
    if not m:
        return None
    try:
        check_wal_name(m.group("wal"))
    except BadWalName:
        return None
    return m.group("wal"), m.group("sha")


def segment_position(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int] | None:
    """(timeline, segment number) of a segment/.partial/.backup name; None for history files."""
    m = _SEGMENT.match(name)
    if not m:
        return None
    per_log = 0x100000000 // segment_size
    return int(m.group(1), 16), int(m.group(2), 16) * per_log + int(m.group(3), 16)


def parse_lsn(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_segment(lsn: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The segment number holding `lsn`."""
    return parse_lsn(lsn) // segment_size


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"

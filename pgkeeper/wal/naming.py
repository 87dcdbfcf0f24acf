"""Names of WAL files and of the objects that hold them in the archive.

An archived file is stored as  wal/<dir>/<walfile>-<sha256 of the raw file>.zst  where <dir> is
the first 16 characters of a segment name (timeline + log: at most 256 segments a directory) or
`history` for timeline history files. The checksum in the name makes a duplicate push a
listing of `<walfile>-` and lets wal-fetch check what it got without a second object.
"""

from __future__ import annotations

from pgkeeper.errors import BadWalName

SUFFIX = ".zst"
HISTORY_DIR = "history"
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
# Plain string tests, not regular expressions: importing `re` costs every wal-push call ~2 ms.
_UPPER_HEX = frozenset("0123456789ABCDEF")
_LOWER_HEX = frozenset("0123456789abcdef")


def _hex(s: str, length: int, digits: frozenset[str] = _UPPER_HEX) -> bool:
    return len(s) == length and all(c in digits for c in s)


def _is_segment(name: str) -> bool:
    """000000010000000A000000FF, optionally followed by .partial or .<8 hex digits>.backup."""
    base, tail = name[:24], name[24:]
    if not _hex(base, 24):
        return False
    return tail in ("", ".partial") or (len(tail) == 16 and tail[0] == "." and _hex(tail[1:9], 8)
                                        and tail[9:] == ".backup")


def is_wal_name(name: str) -> bool:
    """A name PostgreSQL gives to archived files (a segment, .partial, .backup or .history)."""
    return _is_segment(name) or is_history(name)


def check_wal_name(name: str) -> str:
    """A name PostgreSQL gives to archived files; anything else (paths, '..') is refused."""
    if is_wal_name(name):
        return name
    raise BadWalName(f"{name!r} is not a WAL segment, .partial, .backup or .history file name")


def is_history(name: str) -> bool:
    """00000002.history"""
    return len(name) == 16 and _hex(name[:8], 8) and name[8:] == ".history"


def wal_dir(name: str) -> str:
    return HISTORY_DIR if is_history(name) else name[:16]


def object_name(name: str, sha256: str) -> str:
    return f"{name}-{sha256}{SUFFIX}"


def parse_object_name(obj: str) -> tuple[str, str] | None:
    """(wal file name, sha256) of a stored object's base name, or None if it is not one."""
    if not obj.endswith(SUFFIX):
        return None
    wal, dash, sha = obj[:-len(SUFFIX)].rpartition("-")
    if not dash or not _hex(sha, 64, _LOWER_HEX) or not is_wal_name(wal):
        return None
    return wal, sha


def segment_position(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int] | None:
    """(timeline, segment number) of a segment/.partial/.backup name; None for history files."""
    if not _is_segment(name):
        return None
    per_log = 0x100000000 // segment_size
    return int(name[:8], 16), int(name[8:16], 16) * per_log + int(name[16:24], 16)


def parse_lsn(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_segment(lsn: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The segment number holding `lsn`."""
    return parse_lsn(lsn) // segment_size


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"

"""Backup ids (`backup_YYYYMMDD_HHMMSS[_<server>]`, UTC) and the names users type for them.

A backup id names the server it came from (`server_key`: host and port as given plus the system
identifier), so two servers' backups of the same database name sit side by side in one
repository and never mix. Backups made before ids named their server have the bare form; they
form the `unknown` server group (catalog.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pgkeeper.errors import BadName

LATEST = "latest"
UNKNOWN_SERVER = "unknown"  # the server group of backups whose id does not name one
# The blocks a run takes its settings from when no other block is named (pgkeeper setup saves them).
DEFAULT_CONNECTION_BLOCK = "pgkeeper-db"
DEFAULT_REPOSITORY_BLOCK = "pgkeeper-repo"
_ID = re.compile(r"^backup_(\d{8})_(\d{6})(?:_([a-z0-9][a-z0-9-]{0,120}))?$")
_HOST_MAX = 63
# The old shell scripts named files backup_YYYYMMDD_HHMMSS.sql.gz; pgkeeper's own data files
# carry other suffixes. Any of them resolves to its backup.
_FILE = re.compile(r"^(backup_\d{8}_\d{6}(?:_[a-z0-9][a-z0-9-]{0,120})?)(\.[A-Za-z0-9]+){1,3}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


def new_backup_id(now: datetime | None = None, server: str | None = None) -> str:
    """The id for a backup started at `now` (UTC) on `server` (a server_key)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.strftime("backup_%Y%m%d_%H%M%S") + (f"_{server}" if server else "")


def server_key(host: str | None, port: int | None, system_identifier: str | None) -> str:
    """`<host>-<port>-<system identifier>`, lower case, anything but letters and digits turned into
    '-': safe in a path and an S3 key, and free of '_' so that it parses back out of an id.
    A role that may not read pg_control_system() gives `<host>-<port>`."""
    host = re.sub(r"[^a-z0-9]+", "-", (host or "local").lower()).strip("-")[:_HOST_MAX].strip("-") or "local"
    parts = [host, str(int(port or 5432))] + ([str(int(system_identifier))] if system_identifier else [])
    return "-".join(parts)


def backup_id_server(backup_id: str) -> str | None:
    """The server key an id carries, None for an id of the older bare form."""
    m = _ID.match(backup_id)
    return m.group(3) if m else None


def backup_id_stamp(backup_id: str) -> str:
    """`backup_YYYYMMDD_HHMMSS`: the id without its server, what users may type."""
    return backup_id[:len("backup_YYYYMMDD_HHMMSS")]


def backup_id_time(backup_id: str) -> datetime:
    """The UTC start time encoded in a backup id."""
    m = _ID.match(backup_id)
    if not m:
        raise BadName(f"not a backup id: {backup_id!r}")
    try:
        return datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise BadName(f"{backup_id!r} does not hold a real date and time") from None


def is_backup_id(name: str) -> bool:
    return bool(_ID.match(name))


def parse_backup_ref(ref: str) -> str:
    """Turn what a user typed into `latest` or a backup id; refuse anything else."""
    ref = (ref or "").strip()
    if not ref:
        raise BadName("no backup named: give 'latest' or a name like backup_20240315_143022")
    if ref == LATEST:
        return LATEST
    if "/" in ref or "\\" in ref or ".." in ref or "\x00" in ref:
        raise BadName(f"backup name {ref!r} may not contain '/', '\\' or '..'")
    if _ID.match(ref):
        backup_id_time(ref)  # a well-formed but impossible date is refused too
        return ref
    m = _FILE.match(ref)
    if m:
        backup_id_time(m.group(1))
        return m.group(1)
    raise BadName(
        f"{ref!r} is not a backup name: use 'latest', backup_YYYYMMDD_HHMMSS[_<server>] "
        "or an old file name such as backup_20240315_143022.sql.gz"
    )


def check_identifier(kind: str, name: str) -> str:
    """A database or role name we are willing to pass around (no quoting games)."""
    if not name or not _IDENT.match(name):
        raise BadName(f"{kind} name {name!r} is not acceptable (letters, digits, _ $ - only)")
    return name

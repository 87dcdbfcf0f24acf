"""A restore's shadow database: its name and its making (no Prefect: the restore's create-shadow
step and `pgkeeper restore`'s early start, pgkeeper/early_shadow.py, both make it here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pgkeeper.liveness import owner_tag
from pgkeeper.names import check_identifier
from pgkeeper.pgdb import create_database

if TYPE_CHECKING:
    from pgkeeper.connection import ConnectionVerbs
    from pgkeeper.manifest import DatabaseProperties

SHADOW_MARK = "pgkeeper restore in progress"
MAX_NAME = 63


def shadow_name(target: str, token: str) -> str:
    suffix = f"_restoring_{token}"
    return check_identifier("database", target[: MAX_NAME - len(suffix)] + suffix)


def create_shadow(conn: ConnectionVerbs, shadow: str, props: DatabaseProperties | None, owner: str | None,
                  run_id: str | None = None, pid: int | None = None) -> None:
    """An empty database for the restore, shaped as the backup's database was (encoding, locale
    provider and locales, owner, tablespace); settings, ACL and connection limit come after
    pg_restore. Its comment marks it as a shadow and names the process making it (`pid`: the
    command an early start's child works for, which outlives the child), so the next run can
    drop it if this one is killed."""
    create_database(conn, shadow, props, owner,  # type: ignore[arg-type]
                    f"{SHADOW_MARK} since {datetime.now(UTC).isoformat(timespec='seconds')} by "
                    f"{owner_tag(run_id, pid)}")

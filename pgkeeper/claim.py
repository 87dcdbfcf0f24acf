"""Claiming a new backup id in a repository (no Prefect: the begin-backup task and `pgkeeper
backup`'s early start both claim through it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pgkeeper.clock import first_backup_time
from pgkeeper.errors import RepositoryError
from pgkeeper.names import new_backup_id


def claim_backup_id(storage: Any, server_time: datetime | None = None, server: str | None = None) -> str:
    """Claim a fresh backup id naming `server` (names.server_key), newer than every id in the
    repository and from a clock that agrees with the database server's (pgkeeper.clock); two
    backups started in the same second get the next second."""
    storage.ensure_writable()
    existing = storage.claimed_ids()  # incomplete ones count too
    now = first_backup_time(existing, datetime.now(UTC), server_time)
    for attempt in range(30):
        backup_id = new_backup_id(now + timedelta(seconds=attempt), server)
        try:
            storage.begin_backup(backup_id)
            return backup_id
        except RepositoryError:
            if backup_id not in storage.claimed_ids():
                raise
    raise RepositoryError(f"could not claim a new backup id in {storage.describe()}")

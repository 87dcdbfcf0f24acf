"""Never two backups of one database at once, whichever deployment, fleet or CLI starts them.

A Prefect global concurrency limit with one slot per database, held for the whole backup.
It lives on the server, so it holds across processes, workers and machines. The limit is
created on first use (a missing limit would not limit anything).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager


def database_limit_name(database: str) -> str:
    return "pgkeeper-backup-" + re.sub(r"[^a-z0-9_-]+", "-", database.lower())


@contextmanager
def backup_slot(database: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold the database's backup slot; waits while another backup of it runs."""
    from prefect.concurrency.sync import concurrency

    from pgkeeper.deployments.server_objects import ensure_limit

    name = database_limit_name(database)
    ensure_limit(name, 1)
    # A short lease: a backup whose process is killed frees its slot in a minute (the API minimum), not five.
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True, lease_duration=60):
        yield

"""One-at-a-time slots: Prefect global concurrency limits with one slot per database and kind.

Never two backups of one database at once, never two restores into one database, never two
writers of one database's manifests, whichever deployment, fleet or CLI starts them. A limit
lives on the server, so it holds across processes, workers and machines. It is created on
first use (a missing limit would not limit anything).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager


def limit_name(kind: str, database: str, server: str | None = None) -> str:
    # The same database name on two servers is two databases (issue 16): the server, when known, is in the name.
    where = f"{server}-{database}" if server else database
    return f"pgkeeper-{kind}-" + re.sub(r"[^a-z0-9_-]+", "-", where.lower())


def database_limit_name(database: str, server: str | None = None) -> str:
    """The backup slot's limit; `server` is host:port as the connection gives it."""
    return limit_name("backup", database, server)


@contextmanager
def one_at_a_time(name: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold the single slot of limit `name`; waits while someone else holds it (TimeoutError
    after timeout_seconds)."""
    from prefect.concurrency.sync import concurrency

    ensure_limit(name, 1)
    # A short lease: a holder whose process is killed frees its slot in a minute (the API minimum), not five.
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True, lease_duration=60):
        yield


@contextmanager
def backup_slot(database: str, server: str | None = None, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold the database's backup slot; waits while another backup of it runs."""
    with one_at_a_time(database_limit_name(database, server), timeout_seconds):
        yield


@contextmanager
def manifest_slot(database: str) -> Iterator[None]:
    """Hold the slot for rewriting this database's manifests (a read-modify-write of a second)."""
    with one_at_a_time(limit_name("manifest", database), timeout_seconds=300):
        yield


def ensure_limit(name: str, limit: int) -> str:
    """A global concurrency limit `name` with `limit` slots."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:
                return "unchanged"  # another run created it just now
            return "created"
        if existing.limit == limit and existing.active:
            return "unchanged"
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
    return "updated"

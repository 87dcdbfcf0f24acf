"""One-at-a-time slots: Prefect global concurrency limits with one slot per database and kind.

Never two backups of one database at once, never two restores into one database, never two
writers of one database's manifests, whichever deployment, fleet or CLI starts them. A limit
lives on the server, so it holds across processes, workers and machines. It is created on
first use (a missing limit would not limit anything).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def limit_name(kind: str, database: str, server: str | None = None) -> str:
    # The same database name on two servers is two databases (issue 16): the server, when known, is in the name.
    where = f"{server}-{database}" if server else database
    return f"pgkeeper-{kind}-" + re.sub(r"[^a-z0-9_-]+", "-", where.lower())


def database_limit_name(database: str, server: str | None = None) -> str:
    """The backup slot's limit; `server` is host:port as the connection gives it."""
    return limit_name("backup", database, server)


# A short lease: a holder whose process is killed frees its slot in a minute (the API minimum), not five.
LEASE_SECONDS = 60


@contextmanager
def one_at_a_time(name: str, timeout_seconds: float | None = None,
                  lease: dict[str, Any] | None = None) -> Iterator[None]:
    """Hold the single slot of limit `name`; waits while someone else holds it (TimeoutError
    after timeout_seconds). `lease` is a lease on it this process already took (the answer of
    increment-with-lease, as `pgkeeper backup`'s early start takes it before Prefect is
    imported): it is held, renewed and given back from here on, as if taken here.

    What `prefect.concurrency.sync.concurrency(name, strict=True, lease_duration=60)` does, with
    the requests made on one client of this thread: Prefect's own starts a service thread with
    a client of its own to acquire and another event loop to release (a version check and a CSRF
    round trip each), about a third of a 10-row backup's flow body. The lease is kept alive and
    a lost lease ends the holder's work by Prefect's own `maintain_concurrency_lease`.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
    from prefect.concurrency._events import emit_concurrency_acquisition_events, emit_concurrency_release_events
    from prefect.concurrency._leases import maintain_concurrency_lease

    with get_client(sync_client=True) as client:
        if lease is None:
            _ensure_limit(client, name, 1)
            granted = _acquire(client, name, timeout_seconds)
        else:
            granted = ConcurrencyLimitWithLeaseResponse.model_validate(lease)
        try:
            events = emit_concurrency_acquisition_events(granted.limits, 1)
            with maintain_concurrency_lease(granted.lease_id, LEASE_SECONDS, raise_on_lease_renewal_failure=True):
                yield
        finally:
            _post(client, "/v2/concurrency_limits/decrement-with-lease", {"lease_id": str(granted.lease_id)})
        emit_concurrency_release_events(granted.limits, 1, events)


def _acquire(client: Any, name: str, timeout_seconds: float | None) -> Any:
    """A lease on one slot of `name`, retrying after the server's Retry-After while it is full."""
    import httpx
    from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse

    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    while True:
        try:
            response = _post(client, "/v2/concurrency_limits/increment-with-lease", {
                "names": [name], "slots": 1, "mode": "concurrency", "lease_duration": LEASE_SECONDS})
            return ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423 Locked: the slot is taken
                raise
            wait = float(exc.response.headers.get("Retry-After", 1))
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the slot of {name} was not free within {timeout_seconds} s")
            wait = min(wait, left)
        time.sleep(wait)


# A write that meets another writer on Prefect's SQLite database fails with SQLITE_BUSY, which the
# server answers with 503; Prefect's client then sleeps 2**n s (1.98 s seen, and it sleeps once
# even with PREFECT_CLIENT_MAX_RETRIES=0) before its retry, on the critical path of every
# restore and backup. The slot's writes are retried here after 0.05 s, doubling to 0.4 s, with
# jitter, for QUICK_RETRY_BUDGET_S; after that Prefect's own retries take over as before.
QUICK_RETRY_CODES = frozenset({429, 502, 503})
QUICK_RETRY_FIRST_S = 0.05
QUICK_RETRY_MAX_S = 0.4
QUICK_RETRY_BUDGET_S = 5.0


def _post(client: Any, path: str, body: dict[str, Any]) -> Any:
    """POST `body` to `path` as `client.request` would (its headers: auth, CSRF token; the answer
    raised for its status as Prefect raises it), a 503/502/429 retried quickly (see above)."""
    import httpx
    from prefect.client.base import PrefectResponse

    http = client._client  # the PrefectHttpxSyncClient that client.request sends through
    give_up = time.monotonic() + QUICK_RETRY_BUDGET_S
    wait = QUICK_RETRY_FIRST_S
    while True:
        request = http.build_request("POST", path, json=body)
        try:
            if http.enable_csrf_support:
                http._add_csrf_headers(request)
            http._add_attribution_headers(request)
            # httpx's own send: PrefectHttpxSyncClient.send is the retry loop that sleeps 2**n s
            response = httpx.Client.send(http, request)
        except httpx.TransportError:
            break  # Prefect's retries of a dropped connection, as before
        if response.status_code == 403 and "Invalid CSRF token" in response.text:
            http.csrf_token = None  # an expired token: Prefect's send fetches a new one
            break
        if response.status_code not in QUICK_RETRY_CODES:
            response = PrefectResponse.from_httpx_response(response)
            response.raise_for_status()
            return response
        pause = _retry_after(response) or random.uniform(wait / 2, wait)
        if time.monotonic() + pause > give_up:
            break
        time.sleep(pause)
        wait = min(wait * 2, QUICK_RETRY_MAX_S)
    return http.send(http.build_request("POST", path, json=body))


def _retry_after(response: Any) -> float | None:
    """The server's Retry-After in seconds (a rate limit's), when it gives one as a number."""
    try:
        return max(float(response.headers["Retry-After"]), 0.0)
    except (KeyError, ValueError):
        return None


@contextmanager
def backup_slot(database: str, server: str | None = None, timeout_seconds: float | None = None,
                lease: dict[str, Any] | None = None) -> Iterator[None]:
    """Hold the database's backup slot; waits while another backup of it runs."""
    with one_at_a_time(database_limit_name(database, server), timeout_seconds, lease):
        yield


@contextmanager
def manifest_slot(database: str) -> Iterator[None]:
    """Hold the slot for rewriting this database's manifests (a read-modify-write of a second)."""
    with one_at_a_time(limit_name("manifest", database), timeout_seconds=300):
        yield


def ensure_limit(name: str, limit: int) -> str:
    """A global concurrency limit `name` with `limit` slots."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return _ensure_limit(client, name, limit)


def _ensure_limit(client: Any, name: str, limit: int) -> str:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

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

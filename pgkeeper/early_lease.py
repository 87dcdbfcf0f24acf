"""The slot lease an early start takes over REST before Prefect is imported, and keeps alive
until the run's slot (slots.one_at_a_time(lease=...)) holds it: a restore's (early_shadow.py) and
a backup's (early.py). Also the lease a killed `pgkeeper restore` recorded in its work directory,
given back by the next restore that clears that directory. Nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pgkeeper.early_api import Api, ApiError
from pgkeeper.slots import LEASE_SECONDS, QUICK_RETRY_CODES, QUICK_RETRY_FIRST_S, QUICK_RETRY_MAX_S, limit_name

T = TypeVar("T")
QUICK_RETRY_BUDGET_S = 2.0  # before the fork, on the command's critical path: less than the run's 5 s
RENEW_EVERY_S = LEASE_SECONDS / 3
LEASE_FILE = ".slot-lease"  # in the work directory: the lease a killed command held (release_recorded_lease)


def retried(call: Callable[[], T]) -> T:
    """`call` tried again after a failed request for up to QUICK_RETRY_BUDGET_S, backing off as
    slots._post does: a write that meets another on Prefect's SQLite database is answered 503
    (seen under load), and a single answer would send the restore down the slow path."""
    give_up = time.monotonic() + QUICK_RETRY_BUDGET_S
    wait = QUICK_RETRY_FIRST_S
    while True:
        try:
            return call()
        except ApiError:
            if time.monotonic() + wait > give_up:
                raise
        time.sleep(random.uniform(wait / 2, wait))
        wait = min(wait * 2, QUICK_RETRY_MAX_S)


def give_back(api: Api, lease_id: str) -> None:
    """The lease released, a busy answer tried again (retried); Api.release_lease ignores it."""
    def release() -> None:
        status, _ = api.call("POST", "/v2/concurrency_limits/decrement-with-lease", {"lease_id": lease_id})
        if status in QUICK_RETRY_CODES:
            raise ApiError(f"releasing lease {lease_id} answered {status}")

    retried(release)


class SlotLease:
    """The restore slot's lease taken before the fork, kept alive until the run's slot holds it
    (`hand_over`) or it is given back (`release`)."""

    def __init__(self, api: Api, lease: dict[str, Any]) -> None:
        self.api, self.lease = api, lease
        self._done = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="early-slot-lease", daemon=True)
        self._renewer.start()

    @classmethod
    def take(cls, api: Api, target: str) -> SlotLease | None:
        """The target's restore slot (tasks/restore_steps.restore_slot's limit), or None when
        another restore holds it or the API cannot say."""
        name = limit_name("restore", target)

        def take() -> dict[str, Any] | None:
            api.ensure_limit(name)
            return api.try_lease(name, LEASE_SECONDS)

        try:
            lease = retried(take)
        except ApiError:
            return None
        return cls(api, lease) if lease is not None else None

    def _renew(self) -> None:
        # Prefect's import and the run's creation take seconds, a lease a minute; a busy machine
        # can stretch the seconds, so the lease is kept alive until the run holds it.
        while not self._done.wait(RENEW_EVERY_S):
            try:
                self.api.renew_lease(self.lease["lease_id"], LEASE_SECONDS)
            except ApiError:
                pass  # the next try, or the run's own renewal, will tell

    def hand_over(self) -> dict[str, Any]:
        """The lease, for the run's restore slot (which renews and releases it from now on)."""
        self._done.set()
        self._renewer.join()
        return self.lease

    def record(self, workdir: Path) -> None:
        """The lease written into the command's work directory (tagged with the command): if the
        command is killed, the next restore that removes the directory gives the slot back at
        once, instead of a minute later when the lease runs out (or never, where the API runs
        no lease service)."""
        path = workdir / LEASE_FILE
        path.write_text(json.dumps({"url": self.api.url, "lease_id": self.lease["lease_id"]}))
        path.chmod(0o600)

    def release(self) -> None:
        """Given back, unless handed over already."""
        if self._done.is_set():
            return
        self.hand_over()
        try:
            give_back(self.api, self.lease["lease_id"])
        except ApiError:
            pass  # it expires within LEASE_SECONDS


def release_recorded_lease(workdir: Path) -> None:
    """Give back the restore slot's lease a dead command recorded in its work directory
    (SlotLease.record), when it was taken from the API this process speaks to (PREFECT_API_URL):
    the command is gone, and what it started died with it."""
    try:
        recorded = json.loads((workdir / LEASE_FILE).read_text())
        url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
        if url and recorded.get("url") == url:
            give_back(Api(url), str(recorded["lease_id"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ApiError):
        pass  # none recorded, or the API cannot say: the lease runs out within LEASE_SECONDS

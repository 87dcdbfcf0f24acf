"""The few Prefect API calls a command makes before Prefect is imported (issue 18's early start).

Plain HTTP over urllib, with the credentials Prefect's own client would send (the local
server's basic-auth string, or an API key), so that the answer is the one the run will get.
Nothing here imports prefect or httpx.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from pgkeeper.server_auth import CLIENT_SETTING

TIMEOUT_S = 10.0


class ApiError(Exception):
    """A call that did not get the answer it needs; the early start then steps aside."""


class Api:
    """Prefect's REST API at `url` (PREFECT_API_URL), as the run's client will reach it."""

    def __init__(self, url: str, env: dict[str, str] | os._Environ[str] = os.environ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if env.get(CLIENT_SETTING):
            token = base64.b64encode(env[CLIENT_SETTING].encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        elif env.get("PREFECT_API_KEY"):
            self.headers["Authorization"] = f"Bearer {env['PREFECT_API_KEY']}"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON or None); a refused or unreachable API raises ApiError."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"the Prefect API at {self.url} did not answer: {exc}") from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status in (401, 403):
            raise ApiError(f"the Prefect API at {self.url} refused the call ({status})")
        return status, payload

    def block_exists(self, slug: str, name: str) -> bool:
        """Whether a block document `name` of type `slug` is saved (what `Block.load` would find)."""
        path = (f"/block_types/slug/{urllib.parse.quote(slug, safe='')}/block_documents/name/"
                f"{urllib.parse.quote(name, safe='')}")
        status, _ = self.call("GET", path)
        if status == 200:
            return True
        if status == 404:
            return False
        raise ApiError(f"reading block {slug}/{name} answered {status}")

    def ensure_limit(self, name: str) -> None:
        """The limit `name` with one active slot, as slots._ensure_limit leaves it."""
        path = f"/v2/concurrency_limits/{urllib.parse.quote(name, safe='')}"
        status, found = self.call("GET", path)
        if status == 404:
            status, _ = self.call("POST", "/v2/concurrency_limits/", {"name": name, "limit": 1})
            if status not in (200, 201, 409):  # 409: another run created it just now
                raise ApiError(f"creating concurrency limit {name} answered {status}")
            return
        if status != 200:
            raise ApiError(f"reading concurrency limit {name} answered {status}")
        if found.get("limit") != 1 or not found.get("active", True):
            status, _ = self.call("PATCH", path, {"limit": 1, "active": True})
            if status not in (200, 204):
                raise ApiError(f"updating concurrency limit {name} answered {status}")

    def try_lease(self, name: str, lease_seconds: float) -> dict[str, Any] | None:
        """The lease response when the slot was free; None when someone else holds it (423)."""
        status, payload = self.call("POST", "/v2/concurrency_limits/increment-with-lease", {
            "names": [name], "slots": 1, "mode": "concurrency", "lease_duration": lease_seconds})
        if status == 200 and isinstance(payload, dict) and payload.get("lease_id"):
            return payload
        if status == 423:  # Locked: the run waits for it in its own slot step
            return None
        raise ApiError(f"taking a slot of {name} answered {status}")

    def renew_lease(self, lease_id: str, lease_seconds: float) -> bool:
        status, _ = self.call("POST", f"/v2/concurrency_limits/leases/{lease_id}/renew",
                                 {"lease_duration": lease_seconds})
        return status in (200, 204)

    def release_lease(self, lease_id: str) -> None:
        self.call("POST", "/v2/concurrency_limits/decrement-with-lease", {"lease_id": lease_id})


class Beside:
    """A call run on a thread of its own while the caller does something else (an API round trip
    beside imports and queries: the wait needs no interpreter lock); `result()` joins it and
    returns its value or raises its error."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = call()
            except BaseException as exc:  # raised in the caller by result()
                self._error = exc

        self._thread = threading.Thread(target=run, name="early-api", daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

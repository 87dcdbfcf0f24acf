"""One-at-a-time slots (pgkeeper/slots.py) against the real Prefect API of the test harness: the
slot is a lease on a global concurrency limit, made and given back on the caller's own client."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def fresh_name() -> str:
    return f"pgkeeper-test-{uuid.uuid4().hex[:12]}"


def read_limit(name: str):  # -> GlobalConcurrencyLimitResponse
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_the_limit_is_created_on_first_use_and_the_slot_given_back() -> None:
    from pgkeeper.slots import one_at_a_time

    name = fresh_name()
    with one_at_a_time(name):
        held = read_limit(name)
        assert (held.limit, held.active, held.active_slots) == (1, True, 1)
    assert read_limit(name).active_slots == 0


def test_a_deactivated_or_widened_limit_is_set_back_to_one_active_slot() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from pgkeeper.slots import ensure_limit, one_at_a_time

    name = fresh_name()
    ensure_limit(name, 1)
    with get_client(sync_client=True) as client:  # someone in the UI: 3 slots, switched off
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=3, active=False))
    with one_at_a_time(name):
        held = read_limit(name)
        assert (held.limit, held.active, held.active_slots) == (1, True, 1)


def test_a_second_holder_waits_and_times_out_while_the_slot_is_taken() -> None:
    from pgkeeper.slots import one_at_a_time

    name = fresh_name()
    with one_at_a_time(name), pytest.raises(TimeoutError) as timed_out, one_at_a_time(name, timeout_seconds=2):
        pytest.fail("two holders of one slot")
    assert str(timed_out.value) == f"the slot of {name} was not free within 2 s"  # one line
    got = threading.Event()
    with one_at_a_time(name):
        waiter = threading.Thread(target=lambda: one_at_a_time_then(name, got))
        waiter.start()
        waiter.join(timeout=3)
        assert not got.is_set()  # still waiting for the holder
    waiter.join(timeout=120)
    assert got.is_set() and read_limit(name).active_slots == 0


def one_at_a_time_then(name: str, got: threading.Event) -> None:
    from pgkeeper.slots import one_at_a_time

    with one_at_a_time(name):
        got.set()


def test_the_slot_is_given_back_when_the_holder_fails() -> None:
    from pgkeeper.slots import one_at_a_time

    name = fresh_name()
    with pytest.raises(RuntimeError, match="the work failed"), one_at_a_time(name):
        raise RuntimeError("the work failed")
    assert read_limit(name).active_slots == 0


class BusyFront:
    """A real HTTP front of the session's Prefect API that answers 503, as a server whose SQLite
    database was busy does (no Retry-After), to the first `busy[path]` POSTs to each path."""

    def __init__(self, api_url: str, busy: dict[str, int]) -> None:
        self.busy = dict(busy)
        self.seen: list[tuple[str, int]] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                path = self.path.removeprefix("/api")
                if self.command == "POST" and front.busy.get(path, 0) > 0:
                    front.busy[path] -= 1
                    front.seen.append((path, 503))
                    self._answer(503, b'{"exception_message": "Service Unavailable"}', "application/json")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                request = urllib.request.Request(api_url + path, data=body, method=self.command, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=60) as r:
                        status, data, kind = r.status, r.read(), r.headers.get("Content-Type", "")
                except urllib.error.HTTPError as exc:
                    status, data, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
                front.seen.append((path, status))
                self._answer(status, data, kind)

            def _answer(self, status: int, data: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BusyFront:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The seconds this thread asked time.sleep for (Prefect's client and slots.py alike)."""
    asked: list[float] = []
    sleep, me = time.sleep, threading.get_ident()

    def recording(seconds: float) -> None:
        if threading.get_ident() == me:
            asked.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(time, "sleep", recording)
    yield asked


def test_a_busy_server_s_503_on_the_slot_is_retried_after_a_short_pause(prefect_api: str, sleeps) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pgkeeper.slots import QUICK_RETRY_MAX_S, ensure_limit, one_at_a_time

    name = fresh_name()
    ensure_limit(name, 1)
    sleeps.clear()  # from here on only reads (never busy on SQLite in WAL mode) and the slot's writes
    take, give_back = "/v2/concurrency_limits/increment-with-lease", "/v2/concurrency_limits/decrement-with-lease"
    with (BusyFront(prefect_api, {take: 2, give_back: 1}) as front, temporary_settings({PREFECT_API_URL: front.url}),
          one_at_a_time(name)):
        assert read_limit(name).active_slots == 1
    assert [s for p, s in front.seen if p == take] == [503, 503, 200]
    assert [s for p, s in front.seen if p == give_back] == [503, 204]
    assert read_limit(name).active_slots == 0
    assert len(sleeps) == 3 and all(0 < s <= QUICK_RETRY_MAX_S for s in sleeps), sleeps  # not Prefect's 2**n s

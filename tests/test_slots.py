"""One-at-a-time slots (pgkeeper/slots.py) against the real Prefect API of the test harness: the
slot is a lease on a global concurrency limit, made and given back on the caller's own client."""

from __future__ import annotations

import threading
import uuid

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
    with one_at_a_time(name), pytest.raises(TimeoutError), one_at_a_time(name, timeout_seconds=2):
        pytest.fail("two holders of one slot")
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

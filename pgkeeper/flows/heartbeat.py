"""A flow run's heartbeat thread is stopped, not waited for.

Prefect beats from a daemon thread that sleeps in 1 s steps, and a sync flow run joins that
thread when the run ends: every run then waits up to a second (half of one on average) after
its last step. The thread stops by itself at its next step once told to (it never beats after
that), as Prefect already lets it do for async flows (`join_on_exit=False`); sync runs here do
the same. Installed once per process by `pgkeeper.flows`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def stop_heartbeats_without_waiting() -> None:
    from prefect import flow_engine

    original = getattr(flow_engine, "_send_heartbeats", None)
    if original is None or getattr(original, "pgkeeper_unjoined", False):
        return  # another Prefect (nothing to change), or already installed

    @contextmanager
    def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        with original(engine, join_on_exit=False):
            yield

    send_heartbeats.pgkeeper_unjoined = True  # type: ignore[attr-defined]
    flow_engine._send_heartbeats = send_heartbeats

"""The Prefect server's default result storage is asked once per run start, not three times.

Starting a flow run, Prefect's engine reads the server's default result storage block
(`GET /admin/storage`) from three places (the result store for the flow, then for the run's
context, then whether results persist by default): three round trips on the critical path of
every command, with the same answer. The answer is remembered for a few seconds per API URL,
so a run start asks once; a long-lived process (a worker, `serve`) still sees a changed server
setting at its next run. Installed once per process by `pgkeeper.flows`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

REMEMBER_S = 10.0


def ask_once_per_run_start() -> None:
    from prefect import results

    original = getattr(results, "_read_server_default_result_storage_block_id", None)
    if original is None or getattr(original, "pgkeeper_remembered", False):
        return  # another Prefect (nothing to change), or already installed
    lock = threading.Lock()
    remembered: dict[str, tuple[float, Any]] = {}

    def read() -> Any:
        from prefect.settings import get_current_settings

        url = str(get_current_settings().api.url)
        with lock:
            hit = remembered.get(url)
        if hit is not None and time.monotonic() - hit[0] < REMEMBER_S:
            return hit[1]
        value = original()
        with lock:
            remembered[url] = (time.monotonic(), value)
        return value

    read.pgkeeper_remembered = True  # type: ignore[attr-defined]
    results._read_server_default_result_storage_block_id = read

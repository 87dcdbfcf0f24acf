"""Retry policy shared by the tasks: visible in one place, tunable from the environment.

PGKEEPER_TASK_RETRIES (default 2) and PGKEEPER_RETRY_DELAY_SECONDS (default 10, doubled on
each attempt) let a test suite or an impatient operator shorten them.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.tasks import exponential_backoff

from pgkeeper.errors import PgkeeperError

RETRIES = int(os.environ.get("PGKEEPER_TASK_RETRIES", "2"))
_BASE = float(os.environ.get("PGKEEPER_RETRY_DELAY_SECONDS", "10"))


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network hiccups and killed tools; never a wrong password or a bad name."""
    try:
        state.result()
    except PgkeeperError as exc:
        return exc.transient
    except Exception:
        return True
    return False


RETRYABLE: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(_BASE),  # _BASE, 2 x _BASE, 4 x _BASE, ...
    "retry_condition_fn": retry_if_transient,
}

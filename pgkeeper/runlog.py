"""Run logs that read like outcomes: an expected error is one line, never a traceback.

Prefect's engines log a failing task's or flow's exception with `exc_info` (the full
traceback, ~60 lines) in the terminal and in the run log the UI shows. For a PgkeeperError
(an unknown backup, an unreachable server) the message already says everything; the
traceback only makes an expected outcome look like a crash. A filter on Prefect's run
loggers drops the traceback of those records and keeps their one line. Catching the error
inside each task instead would hide its type from retries and from the flows that handle
it, and would have to be repeated in every task.

At the very end the engine logs "Engine execution exited with unexpected exception" with
the traceback again, both for a flow that failed with such an error and for a flow that
returned a Cancelled state (a restore nobody confirmed: the engine raises CancelledRun). The
line before it, "Finished in state ...", already says how the run ended, so that record is
dropped. Unexpected errors keep their tracebacks.
"""

from __future__ import annotations

import logging

from pgkeeper.errors import expected_error

RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.engine", "prefect.flow_engine")


class OneLineExpectedErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # CancelledRun by name: importing prefect.exceptions here would run on every log call's path.
        if exc is None or (expected_error(exc) is None and type(exc).__name__ != "CancelledRun"):
            return True
        if str(record.msg).startswith("Engine execution exited"):
            return False
        record.exc_info, record.exc_text = None, None
        return True


_FILTER = OneLineExpectedErrors()


def install() -> None:
    """Attach the filter to Prefect's run loggers (idempotent; logger filters survive Prefect's dictConfig)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

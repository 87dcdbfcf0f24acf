"""Optional Sentry reporting of failed runs: what failed, where, and the state of the machine.

Enabled when a DSN is configured (the Secret block pgkeeper-sentry-dsn, else SENTRY_DSN) and
sentry-sdk is installed (`pip install 'pgkeeper[sentry]'`). The event carries the flow, run,
failed step, database, its size and the repository's free disk. It never carries a secret:
no default integrations (no logs, no local variables), and every string of the event is
scrubbed of every secret pgkeeper knows (pgkeeper/redact.py) before it leaves.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from pgkeeper.redact import known_secrets, scrub  # noqa: F401 (scrub: this module's name for it)

SENTRY_BLOCK = "pgkeeper-sentry-dsn"


def sentry_dsn() -> str | None:
    from pgkeeper.config import load_block

    try:
        from prefect.blocks.system import Secret

        block = load_block(Secret, SENTRY_BLOCK)
    except Exception:
        block = None
    if block is not None:
        return str(block.get())
    return os.environ.get("SENTRY_DSN", "").strip() or None


def failure_context(parameters: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(context for the event, secrets to scrub): database, its size, the repository's free disk."""
    from pgkeeper.config import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK, load_connection, load_repository

    context: dict[str, Any] = {}
    conn = repo = None
    try:
        conn = load_connection(parameters.get("connection_block") or DEFAULT_CONNECTION_BLOCK,
                               database=parameters.get("database"), host=parameters.get("host"),
                               port=parameters.get("port"), user=parameters.get("user"))
        context["database"] = conn.database
        context["server"] = f"{conn.host}:{conn.port}"
        with conn.connect() as c:
            context["database_size_bytes"] = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    except Exception:
        context.setdefault("database_size_bytes", None)
    try:
        repo = load_repository(parameters.get("repository_block") or DEFAULT_REPOSITORY_BLOCK,
                               path=parameters.get("backup_dir"))
        where = Path(repo.path)
        while not where.exists() and where != where.parent:  # not created yet: its disk
            where = where.parent
        usage = shutil.disk_usage(where)
        context["repository"] = repo.path
        context["free_disk_bytes"] = usage.free
        context["total_disk_bytes"] = usage.total
    except Exception:
        context.setdefault("free_disk_bytes", None)
    # Every secret known here, not just the database's: AWS, SMTP, auth strings, keys (redact.py).
    return context, known_secrets(conn, repo, _mail_block())


def _mail_block() -> Any:
    try:
        from pgkeeper.tasks.notify import load_notification

        return load_notification()
    except Exception:
        return None


def failed_step(flow_run_id: Any) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from pgkeeper.runinfo import stopped_at

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=50)
    found = stopped_at((run.name, run.state.type.value if run.state else None, run.state.name if run.state else None)
                       for run in runs)
    return found[0] if found else None


def report_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """A flow `on_failure` hook: one Sentry event per failed run (a no-op without a DSN)."""
    dsn = sentry_dsn()
    if not dsn:
        return
    try:
        import sentry_sdk
    except ImportError:
        return
    context, secrets = failure_context(dict(flow_run.parameters or {}))
    try:
        step = failed_step(flow_run.id)
    except Exception:
        step = None
    error = state.message or state.name
    sentry_sdk.init(dsn=dsn, default_integrations=False, include_local_variables=False,
                    before_send=lambda event, hint: scrub(event, secrets))
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("flow", flow.name)
        scope.set_tag("step", step or "unknown")
        scope.set_tag("database", context.get("database") or "unknown")
        scope.set_context("pgkeeper", {"flow_run": flow_run.name, "step": step,
                                       "backup": f"{flow.name} of {context.get('database')}", **context})
        sentry_sdk.capture_message(f"pgkeeper {flow.name} run {flow_run.name} failed at {step or 'unknown step'}: "
                                   f"{error}", level="error")
    sentry_sdk.flush(timeout=10)

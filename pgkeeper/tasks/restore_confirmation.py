"""Who confirmed a restore that replaces a database, and the record of it.

A replace-mode restore goes ahead only when a person said so: at the terminal (`pgkeeper
restore` with the database name typed back, or `--yes` in a script) or in the run's form in
the UI. The flow's `confirmed` parameter is honoured only when the flow is called in-process
(the CLI after its prompt, or Python code): a deployment run ignores it and waits for the form,
because anyone who may start a deployment would otherwise replace a database unasked.

Every confirmation is recorded in the run's artifact and in the repository's restore log:
one small JSON object per confirmation under `restores/` at the repository's root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pgkeeper.storage.interface import Storage

RESTORE_LOG = "restores"


@dataclass(frozen=True)
class Confirmation:
    how: str  # "terminal" (name typed), "--yes", "form" (the UI), "caller" (Python code)
    typed_name: str | None
    at: str  # ISO 8601, UTC


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# Set by the CLI around its in-process call of the flow: a deployment's parameters cannot reach it.
_TERMINAL: ContextVar[Confirmation | None] = ContextVar("pgkeeper_terminal_confirmation", default=None)


@contextmanager
def confirmed_at_terminal(typed_name: str | None) -> Iterator[None]:
    """Around `restore(..., confirmed=True)` in the CLI: the name typed, or None for --yes."""
    token = _TERMINAL.set(Confirmation("terminal" if typed_name is not None else "--yes", typed_name, _now()))
    try:
        yield
    finally:
        _TERMINAL.reset(token)


def started_by_deployment() -> bool:
    """Whether this run belongs to a deployment: its process was started by a worker or runner
    for a flow run (PREFECT__FLOW_RUN_ID), or the run itself has a deployment."""
    from prefect.context import FlowRunContext

    if os.environ.get("PREFECT__FLOW_RUN_ID"):
        return True
    ctx = FlowRunContext.get()
    return ctx is not None and ctx.flow_run is not None and ctx.flow_run.deployment_id is not None


def given_confirmation(confirmed: bool) -> Confirmation | None:
    """The confirmation the run was started with, when it may stand in for the form; else None."""
    if not confirmed:
        return None
    if started_by_deployment():
        from prefect import get_run_logger

        get_run_logger().warning("confirmed=true is ignored in a deployment run: a restore that replaces a "
                                 "database is confirmed in its form")
        return None
    return _TERMINAL.get() or Confirmation("caller", None, _now())


def form_confirmation(typed_name: str) -> Confirmation:
    return Confirmation("form", typed_name, _now())


def confirmation_line(c: Confirmation) -> str:
    """One line for the artifact, the log and the report."""
    how = {"terminal": "at the terminal", "--yes": "with --yes", "form": "in the form",
           "caller": "by the calling program (confirmed=true)"}.get(c.how, c.how)
    typed = f", typed {c.typed_name!r}" if c.typed_name is not None else ""
    return f"confirmed {how}{typed} at {c.at}"


def write_restore_record(storage: Storage, name: str, data: bytes) -> str:
    """The restore log's one write: `restores/<name>` beside the backups, atomic."""
    return storage.write_record(RESTORE_LOG, name, data)


def read_restore_log(storage: Storage) -> list[dict[str, Any]]:
    """Every recorded confirmation, oldest first."""
    return [json.loads(data) for data in storage.read_records(RESTORE_LOG)]


def record_confirmation(repo: Any, plan: Any, c: Confirmation, keep_old: bool) -> dict[str, Any]:
    """Put the confirmation in the run's artifact and in the repository's restore log.
    (repo: BackupRepository, plan: RestorePlan.) Called in the flow, so the artifact is the run's."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    from pgkeeper.tasks.report import artifact_key

    run_id, run_name = str(flow_run.id or ""), str(flow_run.name or "")
    kept = plan.retire_as if plan.target_exists and keep_old else None
    record = {"flow_run_id": run_id, "flow_run_name": run_name, **asdict(c), "target": plan.target,
              "backup_id": plan.backup_id, "source": plan.source, "kept_copy": kept,
              "replaced_copy_dropped": bool(plan.target_exists and not keep_old)}
    stamp = c.at.replace(":", "").replace("-", "").replace("+0000", "Z")
    where = write_restore_record(repo.storage(), f"{stamp}-{plan.target}-{run_id[:8] or os.getpid()}.json",
                                 json.dumps(record, indent=1).encode())
    line = confirmation_line(c)
    create_markdown_artifact(
        "\n".join([f"# Restore of `{plan.target}` from `{plan.backup_id}` confirmed", "",
                   f"- **Run**: {run_name} (`{run_id}`)", f"- **Confirmation**: {line}",
                   f"- **Backup restored**: `{plan.backup_id}` ({plan.source})",
                   f"- **Copy kept**: {f'`{kept}`' if kept else 'none'}",
                   f"- **Recorded in**: `{where}`"]),
        key=artifact_key("restore-confirmation", plan.target),
        description=f"Confirmation of the restore of {plan.target} from {plan.backup_id}")
    get_run_logger().info("restore of %s into %s %s; recorded in %s", plan.backup_id, plan.target, line, where)
    return record

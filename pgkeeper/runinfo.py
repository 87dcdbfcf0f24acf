"""What a flow run says about itself in the runs list: its name, its tags, its final line.

Prefect names runs "backup calm-ibis" unless told otherwise. A run is first named from its
parameters (`flow_run_name`), then renamed once the flow knows what it works on (the
database behind a connection block, the backup `latest` resolved to), and tagged with the
database and the kind of run. Its final state carries the one-line result, so the runs
list tells the story without a click.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

KIND_PRE_RESTORE = "pre-restore"
# The line of a failure mail (deployments/automations.py) that carries the run's id, so that the
# mail block (blocks/notify.py) can look up the step the run stopped at.
RUN_ID_LINE = "Flow run id: "
# Task run states a failed flow run can have stopped at.
STOPPED_AT_STATES = frozenset({"FAILED", "CRASHED", "RUNNING"})
# What the failure automation matches (pgkeeper.deployments.automations.TAG).
RUN_TAG = "pgkeeper"


def tag_every_run() -> None:
    """Give every flow run this process creates the `pgkeeper` tag.

    Deployments tag their runs, but a run started from the command line, cron, the demo or
    as a subflow of a deployment run (the fleet's backups) takes its tags from Prefect's
    tags context only, so without this its failure would match no automation and mail no one.
    """
    from prefect.context import TagsContext

    current = TagsContext.get().current_tags
    if RUN_TAG not in current:
        TagsContext.__var__.set(TagsContext(current_tags={*current, RUN_TAG}))


@contextmanager
def untagged_tasks() -> Iterator[None]:
    """Task runs started inside carry no `pgkeeper` tag (tags a caller set stay); the flow run
    keeps its own.

    Prefect acquires a concurrency slot with a lease for every tag a task run carries: API round
    trips before each step starts and after it ends, and the `pgkeeper` tag limits nothing (the
    automations match flow-run events). No subflow may start inside: it would miss the tag the
    failure automation matches.
    """
    from prefect.context import TagsContext

    current = TagsContext.get().current_tags
    with TagsContext(current_tags={t for t in current if t != RUN_TAG}):
        yield


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def database_tag(database: str) -> str:
    return f"db:{database}"


def name_from_parameters(kind: str, *keys: str) -> Callable[[], str]:
    """A `flow_run_name` callable: `kind` and the first of `keys` given in the run's parameters."""

    def name() -> str:
        from prefect.runtime import flow_run

        params: dict[str, Any] = dict(flow_run.parameters or {})
        subject = next((str(params[k]) for k in keys if params.get(k)), "")
        labels = params.get("labels") or []
        extra = f" ({KIND_PRE_RESTORE})" if KIND_PRE_RESTORE in labels else ""
        return " ".join(p for p in (kind, subject, today()) if p) + extra

    return name


def describe_run(name: str, tags: Iterable[str], replacing: Iterable[str] = ()) -> None:
    """Rename the current flow run and add `tags` to the ones it has (a deployment's stay), less
    the tags in `replacing`.

    Best effort: a run that cannot be renamed still does its work.
    """
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    try:
        # The run's tags as this process created it (a deployment's included): no read needed.
        gone = set(replacing)
        merged = list(dict.fromkeys([*(t for t in ctx.flow_run.tags if t not in gone), *tags]))
        with get_client(sync_client=True) as client:
            client.update_flow_run(ctx.flow_run.id, name=name, tags=merged)
        ctx.flow_run.name, ctx.flow_run.tags = name, merged
    except Exception as exc:  # the API being busy must not fail a backup
        get_run_logger().debug("could not rename the run: %s", exc)


def stopped_at(task_runs: Iterable[tuple[str, str | None, str | None]]) -> tuple[str, str] | None:
    """(task name, state name) of the step a failed flow run stopped at: the first of its task runs
    (name, state type, state name), newest first, that failed, crashed or was still running."""
    for name, state_type, state_name in task_runs:
        if state_type in STOPPED_AT_STATES:
            # Task run names are the task's name plus a short random suffix.
            return re.sub(r"-[0-9a-f]{3}$", "", name), (state_name or state_type).lower()
    return None


def completed(result: Any, line: str):  # -> State
    """The final state: Completed, with `line` as its message (shown in the runs list) and in the log."""
    from prefect import get_run_logger
    from prefect.states import Completed

    get_run_logger().info(line)
    return Completed(message=line, data=result)


@contextmanager
def beside(fn: Callable[..., Any], *args: Any) -> Iterator[None]:
    """Run `fn(*args)` in a thread of its own, with this run's context (its logger, artifacts
    and task runs belong to the run), while the body of the `with` runs; its error is raised at
    the end. For steps that only wait on the API (artifacts, the mail check) and need nothing
    the body makes."""
    import contextvars
    import threading

    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # raised in the caller's thread below
            failure.append(exc)

    worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), name=f"beside-{fn.__name__}",
                              daemon=True)
    worker.start()
    try:
        yield
    finally:
        worker.join()
    if failure:
        raise failure[0]

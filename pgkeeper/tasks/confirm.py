"""The form a paused restore waits for in the Prefect UI."""

from __future__ import annotations

from prefect.input import RunInput
from pydantic import Field


class RestoreConfirmation(RunInput):
    """Tick confirm and type the target database's name: both, or nothing happens."""

    confirm: bool = Field(default=False, description="Replace the database with the backup")
    database_name: str = Field(default="", description="Type the target database's name to confirm")


def leave_expired_pause(message: str) -> None:
    """Take the run out of its expired pause so that it can end Cancelled.

    Prefect's API turns any state proposed from an expired pause into Failed ("never
    resumed"), which would send a failure mail for a restore that changed nothing. A forced
    transition back to Running skips that rule; the flow then returns Cancelled normally.
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(ctx.flow_run.id, Running(message=message), force=True)


# -- Deployment runs: the wait for approval holds no worker (suspend_flow_run) -------------------
#
# A suspended run's process exits; when the form is submitted the run is scheduled again and a
# worker runs the flow from the top. What the run decided before the wait (the plan: which backup,
# the target, the shadow and old-copy names shown in the form) is kept in the run's own input store
# and used again, so the approval always applies to the plan it was given for: a newer backup that
# appeared meanwhile is not restored instead. A second run of the same deployment, scheduled at the
# deadline, ends a suspension nobody answered (no process is left to notice the timeout).

PLAN_KEY = "pgkeeper-restore-plan"


def can_suspend() -> bool:
    """Whether this run may wait suspended: only a deployment's run can be started again, and not
    one started from inside another flow (Prefect refuses to suspend those: they pause as before)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    return run is not None and run.deployment_id is not None and run.parent_task_run_id is None


def approved_plan() -> dict | None:
    """The plan this run kept before it was suspended (None on its first execution)."""
    from prefect.input.actions import read_flow_run_input

    return read_flow_run_input(PLAN_KEY)


def keep_plan(plan: dict) -> None:
    from prefect.input.actions import create_flow_run_input

    create_flow_run_input(PLAN_KEY, plan)


def schedule_expiry(timeout_seconds: int, target: str) -> None:
    """A run of this deployment at the deadline that closes this run if it is still waiting."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Scheduled

    run = FlowRunContext.get().flow_run  # type: ignore[union-attr]
    at = datetime.now(UTC) + timedelta(seconds=timeout_seconds)
    with get_client(sync_client=True) as client:
        client.create_flow_run_from_deployment(
            run.deployment_id, parameters={"expire_run": str(run.id), "target": target,  # type: ignore[union-attr]
                                           "confirm_timeout_seconds": timeout_seconds},
            state=Scheduled(scheduled_time=at), tags=["restore-expiry"])


def expire_unanswered(flow_run_id: str, message: str) -> bool:
    """End the suspended run `flow_run_id` Cancelled with `message` if nobody answered it; False
    when it was answered (or ended) in the meantime. Forced: the API would turn any way out of an
    expired pause into Failed, which mails a failure for a restore that changed nothing."""
    import logging
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
        if run.state is None or not run.state.is_paused():
            return False
        client.set_flow_run_state(flow_run_id, Cancelled(message=message), force=True)  # type: ignore[arg-type]
        # The line goes into the waiting run's own log too: that is where its reader looks.
        client.create_logs([LogCreate(name="pgkeeper.restore", level=logging.WARNING, message=message,
                                      timestamp=datetime.now(UTC), flow_run_id=run.id)])
    return True

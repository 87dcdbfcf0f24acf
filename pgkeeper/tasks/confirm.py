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

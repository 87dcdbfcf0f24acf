"""The form a paused restore waits for in the Prefect UI."""

from __future__ import annotations

from prefect.input import RunInput
from pydantic import Field


class RestoreConfirmation(RunInput):
    """Tick confirm and type the target database's name: both, or nothing happens."""

    confirm: bool = Field(default=False, description="Replace the database with the backup")
    database_name: str = Field(default="", description="Type the target database's name to confirm")

"""Work pool and variables: created once, left alone if equal (concurrency limits: pgkeeper.slots)."""

from __future__ import annotations

from typing import Any

DEFAULT_WORK_POOL = "pgkeeper"


def ensure_work_pool(name: str = DEFAULT_WORK_POOL) -> str:
    """A process work pool `name` (its type and job template are left alone if it exists)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return "unchanged"
        except ObjectNotFound:
            pass
        client.create_work_pool(WorkPoolCreate(
            name=name, type="process", description="pgkeeper's jobs, run by `pgkeeper serve` or `prefect worker start`",
            base_job_template=ProcessWorker.get_default_base_job_template()))
    return "created"


def ensure_variable(name: str, value: Any) -> str:
    from prefect.variables import Variable

    current = Variable.get(name, default=None)
    if current == value:
        return "unchanged"
    Variable.set(name, value, overwrite=True)
    return "created" if current is None else "updated"

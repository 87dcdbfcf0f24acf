"""Work pool, global concurrency limits and variables: created once, left alone if equal."""

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


def ensure_limit(name: str, limit: int) -> str:
    """A global concurrency limit `name` with `limit` slots."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:
                return "unchanged"  # another run created it just now
            return "created"
        if existing.limit == limit and existing.active:
            return "unchanged"
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
    return "updated"


def ensure_variable(name: str, value: Any) -> str:
    from prefect.variables import Variable

    current = Variable.get(name, default=None)
    if current == value:
        return "unchanged"
    Variable.set(name, value, overwrite=True)
    return "created" if current is None else "updated"

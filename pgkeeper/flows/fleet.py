"""The fleet flows: back up (or verify) many databases through the work pool.

Each database gets its own run of a member deployment (`backup/fleet-member`,
`verify/fleet-member`), so any worker of the pool, on any machine, takes any database. The
fleet waits for them, lists every outcome in one table artifact and fails if any failed.
The member deployment's concurrency limit (a global concurrency limit on the server, set from
`max_parallel`) caps how many run at once across the whole pool; a run waiting for it is only
a row on the server, not a worker process. The per-database slot inside the backup flow still
keeps two backups of one database apart, whoever starts them.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper.config import DEFAULT_REPOSITORY_BLOCK
from pgkeeper.errors import FleetIncomplete, PgkeeperError
from pgkeeper.fmt import first_line, human_seconds
from pgkeeper.runinfo import name_from_parameters
from pgkeeper.sentry import report_failure

BACKUP_MEMBER = "backup/fleet-member"
VERIFY_MEMBER = "verify/fleet-member"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
POLL_SECONDS = 2.0


class FleetResult(BaseModel):
    connection_block: str
    database: str | None = None
    server: str | None = None
    ok: bool
    state: str | None = None
    backup_id: str | None = None
    duration_seconds: float | None = None
    error: str | None = None
    flow_run_id: str | None = None


def one_line(exc: BaseException) -> str:
    if isinstance(exc, PgkeeperError):
        return str(exc)  # written for users: one line, no secret
    return f"{type(exc).__name__}: {first_line(exc)}"


@task(name="cap-parallel", retries=2, retry_delay_seconds=2)
def cap_parallel(deployment: str, max_parallel: int) -> None:
    """Set the member deployment's concurrency limit: at most `max_parallel` members run at
    once in the whole pool; the others wait on the server (not in a worker) for a slot."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise PgkeeperError(f"deployment {deployment} does not exist: run `pgkeeper setup` "
                                "(or `prefect deploy --all`)") from None
        current = found.global_concurrency_limit.limit if found.global_concurrency_limit else None
        if current != max(max_parallel, 1):
            client.update_deployment(found.id, DeploymentUpdate(concurrency_limit=max(max_parallel, 1)))


@task(name="where", cache_policy=NO_CACHE)
def where(connection_block: str) -> tuple[str | None, str | None, str | None]:
    """(database, server, error) of a member: the table names each database with its server."""
    from pgkeeper.config import load_connection

    try:
        conn = load_connection(connection_block)
    except Exception as exc:  # a missing block is that member's failure, not the fleet's
        return None, None, one_line(exc)
    return conn.database, f"{conn.host}:{conn.port}", None


@task(name="start-member", retries=2, retry_delay_seconds=2)
def start_member(deployment: str, parameters: dict[str, Any]) -> str:
    """Start one member run (returns at once) and give its id."""
    from prefect.context import get_run_context
    from prefect.deployments import run_deployment

    # A retry after a lost answer must not start the database's backup twice.
    key = f"{get_run_context().task_run.flow_run_id}:{parameters['connection_block']}"
    run = run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=True, idempotency_key=key)
    return str(run.id)


@task(name="wait-for-members", cache_policy=NO_CACHE)
def wait_for_members(run_ids: list[str], timeout_seconds: float) -> dict[str, dict[str, Any]]:
    """The final state of each run (or the one it is in when the timeout passes)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_seconds
    seen: dict[str, dict[str, Any]] = {}
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[UUID(i) for i in run_ids])), limit=len(run_ids) or 1)
            for r in runs:
                seen[str(r.id)] = {"state": r.state.type.value if r.state else "UNKNOWN",
                                   "name": r.state.name if r.state else "Unknown",
                                   "message": (r.state.message or "") if r.state else "",
                                   "seconds": r.total_run_time.total_seconds() if r.total_run_time else None}
            if all(seen.get(i, {}).get("state") in FINAL for i in run_ids) or time.monotonic() > deadline:
                return seen
            time.sleep(POLL_SECONDS)


def outcome(block: str, database: str | None, server: str | None, run_id: str,
            run: dict[str, Any] | None, kind: str) -> FleetResult:
    base = {"connection_block": block, "database": database, "server": server, "flow_run_id": run_id}
    if run is None:
        return FleetResult(**base, ok=False, error="the run was not found")
    ok = run["state"] == "COMPLETED"
    message = first_line(run["message"]) if run["message"] else ""
    if run["state"] not in FINAL:
        error = f"still {run['name']} when the fleet stopped waiting"
    elif ok:
        error = None
    else:
        error = f"{run['name']}: {message or 'no message (its process may have been killed)'}"
    backup_id = message.split()[0] if ok and kind == "backup" and message.startswith("backup_") else None
    return FleetResult(**base, ok=ok, state=run["name"], backup_id=backup_id,
                       duration_seconds=run["seconds"], error=error)


@task(name="report-fleet")
def report_fleet(results: list[FleetResult], key: str, what: str) -> None:
    rows = [{"connection block": r.connection_block, "database": r.database or "-", "server": r.server or "-",
             "result": "OK" if r.ok else "FAILED", "state": r.state or "-", "backup id": r.backup_id or "-",
             "duration": human_seconds(r.duration_seconds) if r.duration_seconds else "-",
             "flow run": r.flow_run_id or "-", "error": r.error or ""} for r in results]
    failed = sum(not r.ok for r in results)
    create_table_artifact(rows, key=key, description=f"{len(results) - failed} of {len(results)} databases {what}")


def run_fleet(kind: str, deployment: str, connection_blocks: list[str] | None, extra: dict[str, Any],
              max_parallel: int, timeout_seconds: float) -> list[FleetResult]:
    """Start one member run per database, wait for them all, report, fail if any failed."""
    from pgkeeper.fleet_def import fleet_members

    logger = get_run_logger()
    names = fleet_members(connection_blocks)
    cap_parallel(deployment, max_parallel)
    places = {name: where(name) for name in names}
    started: dict[str, str] = {}
    for name in names:
        if places[name][2] is None:
            started[name] = start_member(deployment, {"connection_block": name, **extra})
    logger.info("%d %s runs started (%s), at most %d at once", len(started), deployment, ", ".join(started),
                max_parallel)
    runs = wait_for_members(list(started.values()), timeout_seconds) if started else {}
    results = []
    for name in names:
        database, server, error = places[name]
        if error is not None:
            results.append(FleetResult(connection_block=name, ok=False, error=error))
        else:
            results.append(outcome(name, database, server, started[name], runs.get(started[name]), kind))
    what = "backed up" if kind == "backup" else "verified"
    report_fleet(results, f"fleet-{kind}s" if kind == "backup" else "fleet-verify", what)
    for r in results:
        logger.info("%s (%s on %s): %s", r.connection_block, r.database, r.server,
                    f"OK {r.backup_id or ''}".strip() if r.ok else f"FAILED {r.error}")
    failed = [r for r in results if not r.ok]
    if failed:
        verb = "backups" if kind == "backup" else "verifications"
        raise FleetIncomplete(f"{len(failed)} of {len(results)} {verb} failed: "
                              + "; ".join(f"{r.connection_block}: {r.error}" for r in failed))
    return results


@flow(name="fleet", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],
      flow_run_name=name_from_parameters("fleet"))
def fleet(
    connection_blocks: list[str] | None = None,
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    max_parallel: int = 4,
    timeout_seconds: float = 6 * 3600,
    member_deployment: str = BACKUP_MEMBER,
) -> list[FleetResult]:
    """Back up each database of the fleet (the blocks given, else the `pgkeeper_fleet` variable,
    else the `pgkeeper-fleet-*` blocks), at most `max_parallel` at a time across the pool.

    The run fails if any database failed, crashed or had not finished after `timeout_seconds`.
    """
    return run_fleet("backup", member_deployment, connection_blocks, {"repository_block": repository_block},
                     max_parallel, timeout_seconds)


@flow(name="fleet-verify", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],
      flow_run_name=name_from_parameters("fleet-verify"))
def fleet_verify(
    connection_blocks: list[str] | None = None,
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    restore: bool = False,
    max_parallel: int = 2,
    timeout_seconds: float = 6 * 3600,
    member_deployment: str = VERIFY_MEMBER,
) -> list[FleetResult]:
    """Verify the latest backup of each database of the fleet (with a restore drill if `restore`)."""
    return run_fleet("verify", member_deployment, connection_blocks,
                     {"repository_block": repository_block, "backup": "latest", "restore": restore},
                     max_parallel, timeout_seconds)

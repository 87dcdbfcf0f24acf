"""The fleet flow: back up many databases at once; one failing never stops the others."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from pydantic import BaseModel

from pgkeeper.config import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK
from pgkeeper.errors import FleetIncomplete, PgkeeperError
from pgkeeper.fmt import first_line, human_bytes, human_seconds
from pgkeeper.runinfo import name_from_parameters
from pgkeeper.sentry import report_failure


class FleetResult(BaseModel):
    connection_block: str
    database: str | None = None
    ok: bool
    backup_id: str | None = None
    size: int | None = None
    duration_seconds: float | None = None
    error: str | None = None


def one_line(exc: BaseException) -> str:
    if isinstance(exc, PgkeeperError):
        return str(exc)  # written for users: one line, no secret
    return f"{type(exc).__name__}: {first_line(exc)}"


# No retries here: the backup flow retries its own steps; this only records the outcome.
@task(name="back-up-one", cache_policy=NO_CACHE)
def back_up_one(connection_block: str, repository_block: str) -> FleetResult:
    """Run the backup flow for one database (as a subflow) and record how it went."""
    from pgkeeper.flows.backup import backup

    try:
        m = backup(connection_block=connection_block, repository_block=repository_block)
    except Exception as exc:
        return FleetResult(connection_block=connection_block, ok=False, error=one_line(exc))
    return FleetResult(connection_block=connection_block, database=m.database, ok=True, backup_id=m.backup_id,
                       size=m.size, duration_seconds=m.duration_seconds)


@task(name="report-fleet")
def report_fleet(results: list[FleetResult]) -> None:
    rows = [{"connection block": r.connection_block, "database": r.database or "-",
             "result": "OK" if r.ok else "FAILED", "backup id": r.backup_id or "-",
             "size": human_bytes(r.size) if r.size else "-",
             "duration": human_seconds(r.duration_seconds) if r.duration_seconds else "-",
             "error": r.error or ""} for r in results]
    failed = sum(not r.ok for r in results)
    create_table_artifact(rows, key="fleet-backups",
                          description=f"{len(results) - failed} of {len(results)} databases backed up")


@flow(name="fleet", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],
      flow_run_name=name_from_parameters("fleet"))
def fleet(
    connection_blocks: list[str] | None = None,
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    max_parallel: int = 4,
) -> list[FleetResult]:
    """Back up each database named by a connection block, at most `max_parallel` at a time.

    Two backups of one database never overlap, here or across deployments (the backup flow
    holds the database's concurrency slot). The run fails if any database failed.
    """
    names = list(dict.fromkeys(connection_blocks or [DEFAULT_CONNECTION_BLOCK]))
    waiting, running, results = list(names), [], []
    while waiting or running:
        while waiting and len(running) < max(max_parallel, 1):
            running.append(back_up_one.submit(waiting.pop(0), repository_block))
        done = next(as_completed(running))
        running.remove(done)
        results.append(done.result())
    results.sort(key=lambda r: names.index(r.connection_block))
    report_fleet(results)
    failed = [r for r in results if not r.ok]
    for r in results:
        print(f"{r.connection_block}: " + (f"OK {r.backup_id}" if r.ok else f"FAILED {r.error}"))
    if failed:
        raise FleetIncomplete(f"{len(failed)} of {len(results)} backups failed: "
                              + "; ".join(f"{r.connection_block}: {r.error}" for r in failed))
    return results

"""The weekly-report flow, scheduled Monday morning: the week at a glance, mailed and kept as the
run's markdown artifact (the old scripts' "Weekly backup report email")."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pgkeeper.config import DEFAULT_REPOSITORY_BLOCK, load_repository
from pgkeeper.runinfo import name_from_parameters
from pgkeeper.tasks.weekly_report import gather_week, send_report
from pgkeeper.weekly import body, build, subject


@flow(name="weekly-report", log_prints=True, flow_run_name=name_from_parameters("weekly-report", "repository_block"))
def weekly_report(
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    backup_dir: str | None = None,
    days: int = 7,
    now: datetime | None = None,
) -> str:
    """Gather the last `days` days from the repository (local and bucket) and the WAL archive,
    put the report in an artifact, and mail it. `now`: the end of the week (default: now).
    Returns the mail's subject."""
    repo = load_repository(repository_block, path=backup_dir)
    report = build(gather_week(repo, now or datetime.now(UTC), days))
    create_markdown_artifact(body(report, markdown=True), key="weekly-report",
                             description=subject(report))
    send_report(subject(report), body(report))
    print(subject(report))
    return subject(report)

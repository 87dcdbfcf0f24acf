"""The weekly report's steps: gather the week's facts from the repository, publish, send."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups
from pgkeeper.settings import DEFAULT_PRICES
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tasks.restore_confirmation import read_restore_log
from pgkeeper.tasks.retention import RETENTION_RECORDS
from pgkeeper.weekly import WeekFacts


@task(name="gather-week", cache_policy=NO_CACHE, **RETRYABLE)
def gather_week(repo: BackupRepository, now: datetime, days: int = 7) -> WeekFacts:
    """Every fact the report needs, read from the repository (both places) and the WAL archive."""
    places = {"local": repo.storage("local")}
    if repo.offsite is not None:
        places["s3"] = repo.storage("s3")
    manifests = {place: list_backups(storage) for place, storage in places.items()}
    restores: list[dict[str, Any]] = []
    retention: list[dict[str, Any]] = []
    for storage in places.values():
        restores += read_restore_log(storage)
        retention += [json.loads(r) for r in storage.read_records(RETENTION_RECORDS)]
    # A restore recorded in both places (a copy of the log) counts once.
    restores = list({(r.get("at"), r.get("target"), r.get("backup_id")): r for r in restores}.values())
    local = places["local"]
    return WeekFacts(now=now, manifests=manifests, restores=restores, retention=retention,
                     wal=wal_health(repo, [m for ms in manifests.values() for m in ms]),
                     free_space=local.free_space(), min_free_fraction=repo.min_free_fraction,
                     default_class=(repo.s3_storage_class or "STANDARD").upper(),
                     prices={**DEFAULT_PRICES, **repo.prices}, failed_runs=failed_runs(now - timedelta(days=days), now),
                     days=days)


def wal_health(repo: BackupRepository, manifests: list) -> dict[str, Any]:  # noqa: ANN001
    """Segments archived, the newest, and how far back and forward recovery reaches (the oldest
    kept base backup's consistent point to the newest archived WAL), with any gap."""
    physical = {m.backup_id: m for m in manifests if m.kind == "physical" and m.start_lsn}
    if not physical:
        return {}
    from pgkeeper.wal.continuity import check
    from pgkeeper.wal.setup import config_from_repository
    from pgkeeper.wal.view import add_s3, local_view

    cfg = config_from_repository(repo)
    view = local_view(cfg.spool)
    if cfg.s3 is not None:
        from pgkeeper.wal.s3 import S3WalStore

        add_s3(view, S3WalStore(cfg.s3))
    sizes = {m.wal_segment_size for m in physical.values() if m.wal_segment_size}
    report = check([(m.backup_id, m.start_lsn, m.timeline or 1, m.finished_at) for m in physical.values()],
                   view.archived, view.histories, sizes.pop() if len(sizes) == 1 else 16 << 20)
    ends = [w.latest for b in report.backups for w in b.windows if w.latest]
    good = [physical[b.backup_id].finished_at for b in report.backups if b.ok]
    return {"segments": len([n for n in view.archived if len(n) == 24]), "newest": report.newest_segment,
            "recoverable_from": f"{min(good):%Y-%m-%d %H:%M} UTC" if good else None,
            "recoverable_to": f"{max(ends):%Y-%m-%d %H:%M} UTC" if ends else None,
            "gaps": [f"{b.backup_id} cannot be recovered past {b.missing[0]} (missing)" for b in report.backups
                     if not b.ok and b.missing]}


def failed_runs(since: datetime, until: datetime) -> list[str]:
    """Runs of the week that ended Failed or Crashed (best effort: the report goes out without)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=since, before_=until),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED]))))
    except Exception as exc:  # the API is down: say so in the log, not in a failed report
        get_run_logger().warning("could not read the week's failed runs: %s", type(exc).__name__)
        return []
    return [f"{r.name}: {r.state_name} at {r.start_time:%Y-%m-%d %H:%M}" for r in runs]


def send_report(subject: str, body: str) -> bool:
    """The one place the weekly report leaves by: as an event that `pgkeeper setup`'s report
    automation sends to every channel (mail, Slack, Teams, webhooks), or, without that
    automation, straight to the configured mail. Whether it went; never raises (the artifact
    has the report)."""
    from pgkeeper.events import REPORT_AUTOMATION, weekly_report
    from pgkeeper.tasks.notify import load_notification, send_mail, success_automation_exists

    if success_automation_exists(REPORT_AUTOMATION):
        return weekly_report(subject, body)
    notification = load_notification()
    if notification is None:
        get_run_logger().info("no mail configured: the report is the run's artifact only")
        return False
    try:
        send_mail(notification, subject, body)
    except Exception as exc:
        get_run_logger().warning("could not send the weekly report: %s", type(exc).__name__)
        return False
    return True

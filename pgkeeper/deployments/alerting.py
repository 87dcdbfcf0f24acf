"""Automations beyond failures: the success notification and the alerts on absence.

Failures and warnings are events that happen (automations.py). The worst outages produce no
event at all: a dead worker, a paused deployment, a deleted schedule. Prefect's *proactive*
triggers fire when an expected event did NOT arrive within a window, and they are evaluated
on the server, so they work when no pgkeeper process runs:

- no `pgkeeper.backup.completed` for a database within its interval plus grace (26 h);
- no restore-verified backup (`pgkeeper.backup.verified`, method restore) within 8 days;
- no WAL shipped (`pgkeeper.wal.shipped`) within N minutes, while WAL archiving is on;
- the work pool not ready (no worker heartbeat) and not ready again within N minutes.

Every alert goes to every notification channel (mail, Slack, Teams, webhook: channels.py).
Windows come from the environment (hours/days/minutes, decimals allowed):
BACKUP_ALERT_HOURS (26), VERIFY_ALERT_DAYS (8), WAL_ALERT_MINUTES (60), WORKER_ALERT_MINUTES (10).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation, EventTrigger
from prefect.events.schemas.automations import Posture

from pgkeeper.deployments.automations import notify_actions
from pgkeeper.errors import ExitCode, PgkeeperError
from pgkeeper.events import (
    BACKUP_COMPLETED,
    BACKUP_VERIFIED,
    REPORT_AUTOMATION,
    REPORT_RESOURCE,
    RESOURCE_PREFIX,
    SUCCESS_AUTOMATION,
    WAL_SHIPPED,
    WEEKLY_REPORT,
)
from pgkeeper.fmt import human_seconds


class AlertSetupError(PgkeeperError):
    """An alert window in the environment that is not a positive number."""

    exit_code = ExitCode.BAD_INPUT


ABSENCE_PREFIX = "pgkeeper: absence: "
WINDOWS = {  # variable: (default, seconds per unit)
    "BACKUP_ALERT_HOURS": (26.0, 3600),
    "VERIFY_ALERT_DAYS": (8.0, 86400),
    "WAL_ALERT_MINUTES": (60.0, 60),
    "WORKER_ALERT_MINUTES": (10.0, 60),
}


def window(env: Mapping[str, str], name: str) -> timedelta:
    default, unit = WINDOWS[name]
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise AlertSetupError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise AlertSetupError(f"{name} must be more than 0, got {raw!r}")
    return timedelta(seconds=value * unit)


def success_automation(block_ids: Sequence[UUID]) -> Automation:
    """The success message of every backup, as the flow wrote it into its event (same text on
    every channel: size, duration, verification, RTO)."""
    return Automation(
        name=SUCCESS_AUTOMATION,
        description="Send the figures of every completed pgkeeper backup (the old scripts' success mail).",
        trigger=EventTrigger(expect={BACKUP_COMPLETED}, match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
                             posture=Posture.Reactive, threshold=1, within=0),
        actions=notify_actions(block_ids, "{{ event.payload.subject }}", "{{ event.payload.message }}"),
    )


def report_automation(block_ids: Sequence[UUID]) -> Automation:
    """The weekly report on every channel, as the report flow wrote it into its event."""
    return Automation(
        name=REPORT_AUTOMATION,
        description="Send pgkeeper's weekly backup report (the week at a glance) to every channel.",
        trigger=EventTrigger(expect={WEEKLY_REPORT}, match={"prefect.resource.id": REPORT_RESOURCE},
                             posture=Posture.Reactive, threshold=1, within=0),
        actions=notify_actions(block_ids, "{{ event.payload.subject }}", "{{ event.payload.message }}"),
    )


def _absence(name: str, description: str, trigger: EventTrigger, block_ids: Sequence[UUID], subject: str,
             body: str) -> Automation:
    return Automation(name=ABSENCE_PREFIX + name, description=description, trigger=trigger,
                      actions=notify_actions(block_ids, subject, body))


def absence_automations(env: Mapping[str, str], databases: Sequence[str], pool: str, wal_on: bool,
                        block_ids: Sequence[UUID]) -> list[Automation]:
    """The proactive automations for these databases and this work pool."""
    backup_w, verify_w = window(env, "BACKUP_ALERT_HOURS"), window(env, "VERIFY_ALERT_DAYS")
    found = []
    for db in databases:
        # One automation per database (no for_each): its window starts when it is created, so a
        # database that has never been backed up is reported too.
        found.append(_absence(
            f"no backup of {db}", f"No completed backup of {db} within {human_seconds(backup_w.total_seconds())}.",
            EventTrigger(expect={BACKUP_COMPLETED}, match={"prefect.resource.id": f"{RESOURCE_PREFIX}{db}",
                                                           "pgkeeper.backup-kind": "backup"},
                         posture=Posture.Proactive, threshold=1, within=backup_w),
            block_ids, f"[pgkeeper] no backup of {db} for {human_seconds(backup_w.total_seconds())}",
            f"No backup of database {db} completed in the last {human_seconds(backup_w.total_seconds())}.\n\n"
            "Nothing failed: nothing ran. Check that the backup/daily deployment is not paused and still has "
            "its schedule, that a worker serves the pool, and that the server is reachable.\n"))
        found.append(_absence(
            f"no verified backup of {db}",
            f"No restore-verified backup of {db} within {human_seconds(verify_w.total_seconds())}.",
            EventTrigger(expect={BACKUP_VERIFIED}, match={"prefect.resource.id": f"{RESOURCE_PREFIX}{db}",
                                                          "pgkeeper.verification-method": "restore"},
                         posture=Posture.Proactive, threshold=1, within=verify_w),
            block_ids, f"[pgkeeper] no verified backup of {db} for {human_seconds(verify_w.total_seconds())}",
            f"No backup of database {db} passed a restore drill in the last "
            f"{human_seconds(verify_w.total_seconds())}.\n\nA backup is only a backup once a restore of it has "
            "been proven: check the verify/weekly-drill deployment and its runs.\n"))
        if wal_on:
            wal_w = window(env, "WAL_ALERT_MINUTES")
            found.append(_absence(
                f"no WAL archived for {db}", f"No WAL shipped within {human_seconds(wal_w.total_seconds())}.",
                EventTrigger(expect={WAL_SHIPPED}, match={"prefect.resource.id": f"{RESOURCE_PREFIX}{db}"},
                             posture=Posture.Proactive, threshold=1, within=wal_w),
                block_ids, f"[pgkeeper] no WAL archived for {db} for {human_seconds(wal_w.total_seconds())}",
                f"No WAL segment of {db}'s server was shipped in the last {human_seconds(wal_w.total_seconds())} "
                "while WAL archiving is on: point-in-time recovery stops at the last shipped segment.\n\n"
                "Check archive_command (pg_stat_archiver), the spool and the wal-ship/every-5-minutes deployment.\n"))
    worker_w = window(env, "WORKER_ALERT_MINUTES")
    # for_each: a window opens only when the pool goes not-ready (a worker's heartbeat stopped),
    # and closes quietly if a worker is back in time (a restart is no outage).
    found.append(_absence(
        f"no worker for pool {pool}", f"Work pool {pool} without a healthy worker for "
                                      f"{human_seconds(worker_w.total_seconds())}.",
        EventTrigger(after={"prefect.work-pool.not-ready"}, expect={"prefect.work-pool.ready"},
                     match={"prefect.resource.id": "prefect.work-pool.*", "prefect.resource.name": pool},
                     for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1, within=worker_w),
        block_ids, f"[pgkeeper] no healthy worker for pool {pool}",
        f"Work pool {pool} has had no healthy worker for {human_seconds(worker_w.total_seconds())}: "
        "no scheduled backup, verify or WAL shipping can run.\n\nStart one with `pgkeeper serve` "
        f"(or `prefect worker start --pool {pool}`).\n"))
    return found


def stale_absence_automations(wanted: Sequence[Automation]) -> list[str]:
    """Names of pgkeeper's absence automations on the server that `wanted` no longer lists (a
    database removed from the watch list, WAL archiving turned off)."""
    from prefect.client.orchestration import get_client

    names = {a.name for a in wanted}
    with get_client(sync_client=True) as client:
        existing = client.read_automations()
    return [a.name for a in existing if a.name.startswith(ABSENCE_PREFIX) and a.name not in names]


def check_alert_environment(env: Mapping[str, str]) -> None:
    """Bad windows or webhook URLs stop set-up before anything is saved (one line each)."""
    from pgkeeper.deployments.channels import channel_blocks

    for name in WINDOWS:
        window(env, name)
    channel_blocks(env)


def watched_databases(env: Mapping[str, str]) -> list[str]:
    """PGKEEPER_DATABASES (comma-separated, e.g. a fleet's), else POSTGRES_DB."""
    raw = env.get("PGKEEPER_DATABASES", "").strip() or env.get("POSTGRES_DB", "").strip()
    return [d.strip() for d in raw.split(",") if d.strip()]

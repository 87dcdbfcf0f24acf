"""Mail from inside a run: the success mail after a backup, the restore's outcome.

Failure and warning mail do not come from here: Prefect automations send them (see
pgkeeper/deployments/automations.py), so they also go out when a run's process is killed.
Mail is only sent when notifications are configured (the pgkeeper-mail block, or the old
scripts' ENABLE_EMAIL_ALERTS variables); a mail that cannot be sent never fails a backup.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pgkeeper.blocks.notify import MailNotification
from pgkeeper.catalog import list_backups
from pgkeeper.fmt import contents, human_bytes, human_seconds
from pgkeeper.manifest import Manifest
from pgkeeper.tasks.policy import RETRYABLE

DEFAULT_NOTIFICATION_BLOCK = "pgkeeper-mail"
PRE_RESTORE_LABEL = "pre-restore"


def load_notification(block_name: str | None = DEFAULT_NOTIFICATION_BLOCK) -> MailNotification | None:
    """The saved mail block, else one built from ENABLE_EMAIL_ALERTS & co., else None."""
    from pgkeeper.config import load_block, notification_from_env

    return load_block(MailNotification, block_name) or notification_from_env()


def run_url() -> str | None:
    from prefect.runtime import flow_run

    try:
        return flow_run.ui_url
    except Exception:
        return None


def last_restore_drill(repo_storage, database: str) -> tuple[str, float] | None:  # noqa: ANN001
    """(backup id, restore seconds) of the newest backup of `database` whose restore drill passed."""
    for m in reversed(list_backups(repo_storage, database)):
        if m.last_restore_seconds is not None:
            return m.backup_id, m.last_restore_seconds
    return None


def success_mail(m: Manifest, location: str, warnings: list[str], drill: tuple[str, float] | None,
                 url: str | None) -> tuple[str, str]:
    """(subject, body) of the mail a successful backup sends: the figures someone checks."""
    ratio = f"{m.ratio:.1f}x" if m.ratio else "-"
    checks = m.verifications[-1].checks if m.verifications else {}
    verification = m.status + (" (" + ", ".join(f"{k}: {v}" for k, v in checks.items()) + ")" if checks else "")
    rto = (f"{human_seconds(drill[1])} (restore drill of {drill[0]})" if drill
           else "not measured yet: no restore drill has passed for this database")
    if PRE_RESTORE_LABEL in m.labels:
        # Taken by a restore just before it replaced the database: not the nightly backup.
        subject = f"safety backup (pre-restore) of {m.database} OK: {m.backup_id}, {human_bytes(m.size)}"
        first = (f"Safety backup {m.backup_id} of database {m.database} completed, taken before a restore "
                 "replaces the database (label pre-restore; `latest` never picks it).")
    else:
        subject = f"backup of {m.database} OK: {m.backup_id}, {human_bytes(m.size)}"
        first = f"Backup {m.backup_id} of database {m.database} completed."
    lines = [
        first,
        "",
        f"Size:          {human_bytes(m.size)} (raw dump {human_bytes(m.raw_size)})",
        f"Ratio:         {ratio} ({m.compression})",
        f"Duration:      {human_seconds(m.duration_seconds)}",
        f"Tables:        {contents(len(m.tables), m.objects.get('indexes', 0), sum(m.tables.values()))}",
        f"Verification:  {verification}",
        f"RTO:           {rto}",
        f"Location:      {location}",
        f"Database size: {human_bytes(m.database_size)} (PostgreSQL {m.server_version})",
    ]
    if warnings:
        lines += ["", "Warnings:"] + [f"- {w}" for w in warnings]
    if url:
        lines += ["", f"Run: {url}"]
    return subject, "\n".join(lines) + "\n"


@task(name="send-mail", cache_policy=NO_CACHE, **RETRYABLE)
def send_mail(notification: MailNotification, subject: str, body: str) -> None:
    notification.send(subject, body)


def success_automation_exists(name: str | None = None) -> bool:
    """Whether `pgkeeper setup` put this automation (default: the success one) on the server,
    enabled: it then notifies every channel, and the flow does not mail itself."""
    from prefect.automations import Automation

    from pgkeeper.events import SUCCESS_AUTOMATION

    try:
        return Automation.read(name=name or SUCCESS_AUTOMATION).enabled
    except Exception:  # not there (ValueError), or the API cannot say: the flow mails itself
        return False


def mail_backup_success(manifest: Manifest, repo, warnings: list[str]) -> None:  # noqa: ANN001
    """Emit pgkeeper.backup.completed with the backup's figures and its success message. The
    server's success automation sends that message to every channel; without it (mail set up
    from the environment only, no `pgkeeper setup`), the flow sends the mail itself. Logs,
    never raises: the backup is good either way."""
    from pgkeeper.events import backup_completed

    storage = repo.storage()
    drill = last_restore_drill(storage, manifest.database)
    subject, body = success_mail(manifest, storage.describe(), warnings, drill, run_url())
    if backup_completed(manifest, subject, body, drill) and success_automation_exists():
        return
    notification = load_notification()
    if notification is None:
        return
    try:
        send_mail(notification, subject, body)
    except Exception as exc:
        # The backup is good; a mail server outage must not turn it into a failure alert.
        get_run_logger().warning("could not send the success mail: %s", type(exc).__name__)


def restore_done_mail(r, url: str | None) -> tuple[str, str]:  # r: RestoreReport
    """(subject, body) of the mail a completed restore sends."""
    if r.old_copy and r.old_copy_keep_until:
        old = f"{r.old_copy} (kept until {r.old_copy_keep_until:%Y-%m-%d %H:%M} UTC)"
    elif r.old_copy:
        old = r.old_copy
    else:
        old = "none kept"
    subject = f"restore of {r.target} OK: {r.backup_id}, RTO {human_seconds(r.rto_seconds)}"
    lines = [
        f"Database {r.target} was restored from backup {r.backup_id} ({r.source}).",
        "",
        f"Mode:           {'replaced the existing database' if r.mode == 'replace' else 'new database'}",
        f"Tables:         {contents(len(r.tables), r.objects.get('indexes', 0), sum(r.tables.values()))}; "
        "counts, schema, grants, data and properties equal the backup",
        f"RTO:            {human_seconds(r.rto_seconds)} (pg_restore {human_seconds(r.restore_seconds)}; "
        f"waiting for confirmation not counted)",
        f"Previous copy:  {old}",
        f"Safety backup:  {r.safety_backup_id or r.safety_line()}",
        f"Sessions ended: {r.terminated_sessions}",
    ]
    if url:
        lines += ["", f"Run: {url}"]
    return subject, "\n".join(lines) + "\n"


def _send_quietly(subject: str, body: str, what: str) -> None:
    notification = load_notification()
    if notification is None:
        return
    try:
        send_mail(notification, subject, body)
    except Exception as exc:
        # The outcome stands; a mail server outage must not turn it into a failure.
        get_run_logger().warning("could not send the %s mail: %s", what, type(exc).__name__)


def mail_restore_done(report) -> None:  # noqa: ANN001 (RestoreReport)
    """The restore-completed mail, when notifications are configured."""
    _send_quietly(*restore_done_mail(report, run_url()), "restore-completed")


def mail_restore_not_confirmed(target: str, line: str) -> None:
    """A restore that was refused or never confirmed: a notice, not a failure (nothing changed)."""
    url = run_url()
    body = f"{line}\n" + (f"\nRun: {url}\n" if url else "")
    _send_quietly(f"restore of {target} not confirmed: nothing changed", body, "restore-not-confirmed")

"""`pgkeeper setup`: from the old scripts' environment to a running service's configuration.

Blocks (connection, repository, S3, SMTP, mail, Sentry DSN), the work pool, the variables
prefect.yaml reads, the deployments and the automations. Each step creates what is missing,
updates what differs and leaves the rest alone, so a second run changes nothing.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from pgkeeper import settings
from pgkeeper.config import (
    DEFAULT_CONNECTION_BLOCK,
    DEFAULT_REPOSITORY_BLOCK,
    connection_from_env,
    notification_from_env,
    repository_from_env,
    s3_bucket_block,
)
from pgkeeper.deployments.blocks import save_block
from pgkeeper.deployments.server_objects import DEFAULT_WORK_POOL, ensure_variable, ensure_work_pool

SMTP_BLOCK = "pgkeeper-smtp"
MAIL_BLOCK = "pgkeeper-mail"
AWS_BLOCK = "pgkeeper-aws"
S3_BLOCK = "pgkeeper-s3"
SENTRY_BLOCK = "pgkeeper-sentry-dsn"

Report = Callable[[str, str], None]


def engine_command() -> str:
    """The runs' command (prefect.yaml's job variable `command`): this Python's Prefect engine. A
    process worker given no command starts each run through a workspace supervisor, a Prefect
    start-up of its own (~3-4 s CPU) that only execs this same command: half a small run's cost."""
    return shlex.join([sys.executable, "-m", "prefect.engine"])


def repository_fields(env: Mapping[str, str], offsite: Any | None) -> dict[str, Any]:
    """The repository block's settings that the environment decides (only fields it has)."""
    base = repository_from_env(env)
    fields = base.model_dump(exclude={"block_type_slug"})
    known = type(base).model_fields
    if "offsite" in known:
        fields["offsite"] = offsite
    if "s3_upload" in known:
        fields["s3_upload"] = offsite is not None
    return fields


def encryption_key(env: Mapping[str, str]) -> tuple[str, str]:
    """The backup encryption key: kept if one exists, else made, with the copy the user must keep
    elsewhere written to PGKEEPER_KEY_COPY_DIR (default: the current directory)."""
    from pgkeeper import keys, sealing

    current = keys.recipients()
    if current:
        return f"encryption key {sealing.fingerprint(current[0])}", "unchanged"
    fp, _recipient, copy = keys.create_key(Path(env.get("PGKEEPER_KEY_COPY_DIR") or Path.cwd()))
    return (f"encryption key {fp} (private key copy {copy}: move it OFF this machine; "
            "without it the backups cannot be restored)", "created")


def run_setup(env: Mapping[str, str] = os.environ, prefect_yaml: Path | None = None,
              report: Report = lambda item, outcome: None) -> list[tuple[str, str]]:
    """Apply the environment; returns (item, 'created'|'updated'|'unchanged'|'removed'|'off')."""
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.deployments.alerting import (
        REPORT_AUTOMATION,
        SUCCESS_AUTOMATION,
        absence_automations,
        check_alert_environment,
        report_automation,
        stale_absence_automations,
        success_automation,
        watched_databases,
    )
    from pgkeeper.deployments.automations import (
        CRASH_AUTOMATION,
        FAILURE_AUTOMATION,
        WARNING_AUTOMATION,
        apply_automation,
        crash_automation,
        failure_automation,
        remove_automation,
        warning_automation,
    )
    from pgkeeper.deployments.channels import ensure_channels
    from pgkeeper.deployments.deploy import WAL_DEPLOYMENTS, apply_deployments, default_prefect_yaml, set_paused
    from pgkeeper.deployments.fleet_setup import FLEET_DEPLOYMENTS, apply_fleet_file, fleet_file
    from pgkeeper.names import check_identifier

    settings.check_environment(env)
    check_alert_environment(env)
    check_identifier("database", env["POSTGRES_DB"])
    done: list[tuple[str, str]] = []

    def note(item: str, outcome: str) -> None:
        done.append((item, outcome))
        report(item, outcome)

    conn = connection_from_env(env)
    if not isinstance(conn.password, SecretStr) and conn.password is not None:
        conn = conn.model_copy(update={"password": SecretStr(str(conn.password))})
    note(f"block {DEFAULT_CONNECTION_BLOCK} ({conn.describe()})", save_block(conn, DEFAULT_CONNECTION_BLOCK)[0])

    offsite = None
    target = settings.s3_from_env(env)
    if settings.s3_upload_enabled(env) and target is not None:
        creds, make_bucket = s3_bucket_block(target)
        outcome, saved_creds = save_block(creds, AWS_BLOCK)
        note(f"block {AWS_BLOCK}", outcome)
        outcome, offsite = save_block(make_bucket(saved_creds), S3_BLOCK)
        note(f"block {S3_BLOCK} (s3://{env['S3_BUCKET'].strip()}/{env.get('S3_PREFIX', '').strip('/')})", outcome)
    if offsite is not None:  # offsite copies are encrypted: a key must exist before the first backup
        note(*encryption_key(env))
    repo = BackupRepository(**repository_fields(env, offsite))
    note(f"block {DEFAULT_REPOSITORY_BLOCK} ({repo.path})", save_block(repo, DEFAULT_REPOSITORY_BLOCK)[0])

    mail_block_id = None
    mail = notification_from_env(env)
    if mail is not None:
        outcome, saved_creds = save_block(mail.credentials, SMTP_BLOCK)
        note(f"block {SMTP_BLOCK} ({env['SMTP_HOST'].strip()})", outcome)
        mail = mail.model_copy(update={"credentials": saved_creds})
        outcome, saved_mail = save_block(mail, MAIL_BLOCK)
        note(f"block {MAIL_BLOCK} (to {', '.join(mail.recipients)})", outcome)
        mail_block_id = saved_mail._block_document_id

    dsn = settings.sentry_dsn(env)
    if dsn:
        from prefect.blocks.system import Secret

        note(f"block {SENTRY_BLOCK}", save_block(Secret(value=SecretStr(dsn)), SENTRY_BLOCK)[0])

    fleet_path = fleet_file(env)
    if fleet_path is not None:
        apply_fleet_file(fleet_path, env, note)

    pool = env.get("PGKEEPER_WORK_POOL", DEFAULT_WORK_POOL).strip() or DEFAULT_WORK_POOL
    note(f"work pool {pool} (process)", ensure_work_pool(pool))
    yaml_path = (prefect_yaml or default_prefect_yaml()).resolve()
    heartbeat, grace = settings.heartbeat_settings(env)
    variables: dict[str, Any] = {
        "pgkeeper_project_dir": str(yaml_path.parent),
        "pgkeeper_timezone": (env.get("PGKEEPER_TIMEZONE") or env.get("TZ") or "UTC").strip(),
        # A string: prefect.yaml puts it in the runs' environment (PREFECT_FLOWS_HEARTBEAT_FREQUENCY).
        "pgkeeper_heartbeat_seconds": str(heartbeat),
        "pgkeeper_engine_command": engine_command(),
    }
    for name, value in variables.items():
        note(f"variable {name}={value}", ensure_variable(name, value))
    note(f"deployments from {yaml_path}", apply_deployments(yaml_path, variables))
    # Without WAL archiving, wal-ship and base-backup runs could only fail: keep them paused.
    wal_on = settings.enabled(env, "ENABLE_WAL_ARCHIVING")
    for name in WAL_DEPLOYMENTS:
        note(f"deployment {name} {'active' if wal_on else 'paused'}", set_paused(name, not wal_on))
    # The fleet's schedules run once a fleet is defined; before that they would back up the default block twice.
    for name in FLEET_DEPLOYMENTS:
        note(f"deployment {name} {'active' if fleet_path else 'paused'}", set_paused(name, fleet_path is None))
    # Runs of a machine that died never report an end; their heartbeats stop and this crashes them.
    note(f"automation {CRASH_AUTOMATION!r}", apply_automation(crash_automation(grace)))

    # Every channel (mail, Slack, Teams, webhook, any NotificationBlock) gets every notification.
    channels = ([mail_block_id] if mail_block_id is not None else []) + ensure_channels(env, note)
    wanted = absence_automations(env, watched_databases(env), pool, wal_on, channels) if channels else []
    if channels:
        note(f"automation {FAILURE_AUTOMATION!r}", apply_automation(failure_automation(channels)))
        note(f"automation {WARNING_AUTOMATION!r}", apply_automation(warning_automation(channels)))
        note(f"automation {SUCCESS_AUTOMATION!r}", apply_automation(success_automation(channels)))
        note(f"automation {REPORT_AUTOMATION!r}", apply_automation(report_automation(channels)))
        for automation in wanted:
            note(f"automation {automation.name!r}", apply_automation(automation))
    else:
        for name in (FAILURE_AUTOMATION, WARNING_AUTOMATION, SUCCESS_AUTOMATION, REPORT_AUTOMATION):
            note(f"automation {name!r}", "removed" if remove_automation(name) else "off (ENABLE_EMAIL_ALERTS)")
    for stale in stale_absence_automations(wanted):
        note(f"automation {stale!r}", "removed" if remove_automation(stale) else "unchanged")
    return done

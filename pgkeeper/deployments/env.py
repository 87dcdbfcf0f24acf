"""The old scripts' environment variables, read once, turned into pgkeeper's blocks.

`pgkeeper setup` saves what this builds; flows fall back to it when no block is saved.
Passwords become SecretStr fields, so they show as secrets in the UI and in no log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import SecretStr

from pgkeeper.errors import ExitCode, PgkeeperError

REQUIRED = ("POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "BACKUP_DIR")
REQUIRED_FOR_MAIL = ("ALERT_EMAIL", "SMTP_HOST")
REQUIRED_FOR_S3 = ("S3_BUCKET",)

# Ports the old scripts' users know: 465 is SMTP over SSL, 587 submission with STARTTLS;
# anything else (a relay on 25, a test server) is plain SMTP unless SMTP_TYPE says otherwise.
SMTP_TYPE_BY_PORT = {465: "SSL", 587: "STARTTLS"}


class SetupError(PgkeeperError):
    """The environment does not describe a usable set-up."""

    exit_code = ExitCode.BAD_INPUT


def enabled(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def missing_variables(env: Mapping[str, str]) -> list[str]:
    wanted = list(REQUIRED)
    if enabled(env, "ENABLE_EMAIL_ALERTS"):
        wanted += REQUIRED_FOR_MAIL
    if enabled(env, "ENABLE_S3_UPLOAD"):
        wanted += REQUIRED_FOR_S3
    return [name for name in wanted if not env.get(name, "").strip()]


def check_environment(env: Mapping[str, str]) -> None:
    missing = missing_variables(env)
    if missing:
        raise SetupError(f"missing required environment variable{'s' if len(missing) > 1 else ''}: "
                         f"{', '.join(missing)} (see `pgkeeper setup --help`)")


def int_var(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SetupError(f"{name}={raw!r} is not a whole number") from None


def recipients(env: Mapping[str, str]) -> list[str]:
    return [a.strip() for a in env.get("ALERT_EMAIL", "").split(",") if a.strip()]


def smtp_credentials_from_env(env: Mapping[str, str] = os.environ):  # -> EmailServerCredentials
    from prefect_email import EmailServerCredentials

    port = int_var(env, "SMTP_PORT", 587)
    smtp_type = env.get("SMTP_TYPE", "").strip().upper() or SMTP_TYPE_BY_PORT.get(port, "INSECURE")
    if smtp_type not in {"SSL", "STARTTLS", "INSECURE"}:
        raise SetupError(f"SMTP_TYPE={smtp_type!r}: use SSL, STARTTLS or INSECURE")
    return EmailServerCredentials(
        smtp_server=env["SMTP_HOST"].strip(), smtp_port=port, smtp_type=smtp_type,
        username=env.get("SMTP_USER") or None,
        password=SecretStr(env.get("SMTP_PASS", "")),
    )


def notification_from_env(env: Mapping[str, str] = os.environ):  # -> MailNotification | None
    """The mail block the old scripts' variables describe, or None when mail is off."""
    if not enabled(env, "ENABLE_EMAIL_ALERTS") or not env.get("SMTP_HOST") or not recipients(env):
        return None
    from pgkeeper.blocks.notify import MailNotification

    ui = env.get("PREFECT_UI_URL") or (env["PREFECT_API_URL"].removesuffix("/").removesuffix("/api")
                                       if env.get("PREFECT_API_URL") else None)
    return MailNotification(credentials=smtp_credentials_from_env(env), recipients=recipients(env),
                            sender=env.get("ALERT_FROM") or None, ui_url=ui)


def sentry_dsn_from_env(env: Mapping[str, str] = os.environ) -> str | None:
    return env.get("SENTRY_DSN", "").strip() or None

"""The old scripts' environment variables, parsed in one place, into plain values.

Used by `pgkeeper setup` (which saves them as blocks), by the fallback when no block is saved
(pgkeeper.config) and by the WAL commands (pgkeeper.wal.config), so that all three read the
same variables the same way. Kept light: the WAL commands import it on every segment, so no
Prefect, pydantic, boto3 or dataclasses here.

    POSTGRES_HOST/PORT/USER/PASSWORD/DB     the database (PGSSLMODE-style: POSTGRES_SSLMODE)
    BACKUP_DIR, RETENTION_DAYS              the local repository and its daily window
    S3_BUCKET, S3_PREFIX, ENABLE_S3_UPLOAD  the offsite bucket
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN   (else boto3's usual chain)
    AWS_REGION, then AWS_DEFAULT_REGION     the bucket's region
    AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL   MinIO, R2, moto: path-style addressing
    S3_SSE (AES256 | aws:kms), S3_KMS_KEY_ID, S3_STORAGE_CLASS
    ENABLE_EMAIL_ALERTS, ALERT_EMAIL, SMTP_HOST/PORT/USER/PASS, SMTP_TYPE, ALERT_FROM
    SENTRY_DSN
    PGKEEPER_HEARTBEAT_SECONDS, PGKEEPER_HEARTBEAT_GRACE_SECONDS   crash detection (heartbeat_settings)
    RETENTION_TIERS=on, TIER_{DAILY,WEEKLY,MONTHLY}_{LOCAL,S3}_DAYS, TIER_{WEEKLY,MONTHLY}_CLASS,
    S3_RETRIEVAL_TIER, S3_PRICES                 retention tiers and their cost (see tier_settings)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pgkeeper.errors import SetupError

REQUIRED = ("POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "BACKUP_DIR")
REQUIRED_FOR_MAIL = ("ALERT_EMAIL", "SMTP_HOST")
REQUIRED_FOR_S3 = ("S3_BUCKET",)


def enabled(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def int_var(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SetupError(f"{name}={raw!r} is not a whole number") from None


# Runs beat every 30 s (Prefect's minimum, PREFECT_FLOWS_HEARTBEAT_FREQUENCY); three missed beats
# and the crash automation takes the run's machine for dead.
HEARTBEAT_SECONDS = 30
HEARTBEAT_GRACE_SECONDS = 90
MIN_HEARTBEAT_SECONDS = 30  # Prefect refuses a smaller PREFECT_FLOWS_HEARTBEAT_FREQUENCY
MIN_GRACE_MARGIN = 10  # a beat a few seconds late must not crash a live run


def heartbeat_settings(env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(seconds between a run's heartbeats, seconds without one before the run is crashed)."""
    every = int_var(env, "PGKEEPER_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)
    grace = int_var(env, "PGKEEPER_HEARTBEAT_GRACE_SECONDS", HEARTBEAT_GRACE_SECONDS)
    if every < MIN_HEARTBEAT_SECONDS:
        raise SetupError(f"PGKEEPER_HEARTBEAT_SECONDS={every} is below Prefect's minimum of {MIN_HEARTBEAT_SECONDS}")
    if grace < every + MIN_GRACE_MARGIN:
        raise SetupError(f"PGKEEPER_HEARTBEAT_GRACE_SECONDS={grace} must be at least PGKEEPER_HEARTBEAT_SECONDS "
                         f"+ {MIN_GRACE_MARGIN} ({every + MIN_GRACE_MARGIN}): a live run would be crashed")
    return every, grace


def missing_variables(env: Mapping[str, str]) -> list[str]:
    wanted = list(REQUIRED)
    if enabled(env, "ENABLE_EMAIL_ALERTS"):
        wanted += REQUIRED_FOR_MAIL
    if enabled(env, "ENABLE_S3_UPLOAD"):
        wanted += REQUIRED_FOR_S3
    return [name for name in wanted if not env.get(name, "").strip()]


def check_environment(env: Mapping[str, str]) -> None:
    heartbeat_settings(env)
    missing = missing_variables(env)
    if missing:
        raise SetupError(f"missing required environment variable{'s' if len(missing) > 1 else ''}: "
                         f"{', '.join(missing)} (see `pgkeeper setup --help`)")


SECRET_FIELDS = ("access_key_id", "secret_access_key", "session_token")


class S3Target:
    """One bucket prefix and how to reach it: what the backup driver, the WAL path and the
    blocks all describe. A plain class, not a dataclass: importing dataclasses (and inspect)
    costs wal-push ~5 ms per segment."""

    __slots__ = ("bucket", "prefix", "endpoint_url", "region", "access_key_id", "secret_access_key",
                 "session_token", "path_style", "sse", "kms_key_id", "storage_class", "profile", "credentials_file")

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 session_token: str | None = None, path_style: bool | None = None, sse: str = "AES256",
                 kms_key_id: str | None = None, storage_class: str | None = None, profile: str | None = None,
                 credentials_file: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = (prefix or "").strip("/")
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.access_key_id = access_key_id or None
        self.secret_access_key = secret_access_key or None
        self.session_token = session_token or None
        # MinIO, R2 and friends want path-style addressing; AWS itself is fine with it too.
        self.path_style = bool(endpoint_url) if path_style is None else bool(path_style)
        self.sse = sse or "AES256"
        self.kms_key_id = kms_key_id or None
        self.storage_class = storage_class or None
        self.profile = profile or None
        # A 0600 JSON file with the keys (written for the server's OS user, outside any data
        # directory), so that a config file other processes may read never holds a secret.
        self.credentials_file = credentials_file or None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}

    def public_dict(self) -> dict:
        """Everything but the credentials (for files other users may read, and for logs)."""
        return {k: v for k, v in self.as_dict().items() if k not in SECRET_FIELDS}

    def credentials(self) -> dict[str, str | None]:
        return {k: getattr(self, k) for k in SECRET_FIELDS}

    def read_only(self, env: Mapping[str, str] = os.environ) -> S3Target:
        """This bucket with the restore-side credential when one is set (PGKEEPER_RESTORE_AWS_*:
        an IAM user allowed only to list and read), else itself."""
        if not env.get("PGKEEPER_RESTORE_AWS_ACCESS_KEY_ID"):
            return self
        return S3Target(**{**self.public_dict(), "access_key_id": env["PGKEEPER_RESTORE_AWS_ACCESS_KEY_ID"],
                           "secret_access_key": env.get("PGKEEPER_RESTORE_AWS_SECRET_ACCESS_KEY"),
                           "session_token": env.get("PGKEEPER_RESTORE_AWS_SESSION_TOKEN")})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Target) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:  # never the secret
        return f"S3Target({self.describe()})"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def wal_prefix(self) -> str:
        """Key prefix of the WAL archive: <prefix>/wal/ (the repository's wal/ prefix)."""
        return self.key("wal/")

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def describe_wal(self) -> str:
        return f"s3://{self.bucket}/{self.wal_prefix()}"


def s3_from_env(env: Mapping[str, str] = os.environ) -> S3Target | None:
    """The bucket the old scripts' S3_* and AWS_* variables name, or None without S3_BUCKET."""
    if not env.get("S3_BUCKET", "").strip():
        return None
    return S3Target(
        bucket=env["S3_BUCKET"].strip(), prefix=env.get("S3_PREFIX", "").strip(),
        endpoint_url=(env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").strip() or None,
        region=(env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip() or None,
        access_key_id=env.get("AWS_ACCESS_KEY_ID") or None, secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        sse=(env.get("S3_SSE") or "AES256").strip(), kms_key_id=env.get("S3_KMS_KEY_ID") or None,
        storage_class=env.get("S3_STORAGE_CLASS") or None)


def s3_upload_enabled(env: Mapping[str, str] = os.environ) -> bool:
    # The old scripts uploaded only with ENABLE_S3_UPLOAD=true; the bucket is still readable without it.
    return enabled(env, "ENABLE_S3_UPLOAD")


def postgres_settings(env: Mapping[str, str] = os.environ) -> dict[str, object]:
    """The POSTGRES_* variables as connection fields."""
    return {"host": env.get("POSTGRES_HOST", "localhost"), "port": int_var(env, "POSTGRES_PORT", 5432),
            "user": env.get("POSTGRES_USER", "postgres"), "password": env.get("POSTGRES_PASSWORD"),
            "database": env.get("POSTGRES_DB", "postgres")}


# Ports the old scripts' users know: 465 is SMTP over SSL, 587 submission with STARTTLS;
# anything else (a relay on 25, a test server) is plain SMTP unless SMTP_TYPE says otherwise.
SMTP_TYPE_BY_PORT = {465: "SSL", 587: "STARTTLS"}


def recipients(env: Mapping[str, str] = os.environ) -> list[str]:
    return [a.strip() for a in env.get("ALERT_EMAIL", "").split(",") if a.strip()]


def smtp_settings(env: Mapping[str, str] = os.environ) -> dict[str, object]:
    port = int_var(env, "SMTP_PORT", 587)
    smtp_type = env.get("SMTP_TYPE", "").strip().upper() or SMTP_TYPE_BY_PORT.get(port, "INSECURE")
    if smtp_type not in {"SSL", "STARTTLS", "INSECURE"}:
        raise SetupError(f"SMTP_TYPE={smtp_type!r}: use SSL, STARTTLS or INSECURE")
    return {"smtp_server": env["SMTP_HOST"].strip(), "smtp_port": port, "smtp_type": smtp_type,
            "username": env.get("SMTP_USER") or None, "password": env.get("SMTP_PASS", "")}


def mail_enabled(env: Mapping[str, str] = os.environ) -> bool:
    return enabled(env, "ENABLE_EMAIL_ALERTS") and bool(env.get("SMTP_HOST")) and bool(recipients(env))


def ui_url(env: Mapping[str, str] = os.environ) -> str | None:
    if env.get("PREFECT_UI_URL"):
        return env["PREFECT_UI_URL"]
    api = env.get("PREFECT_API_URL")
    return api.removesuffix("/").removesuffix("/api") if api else None


def sentry_dsn(env: Mapping[str, str] = os.environ) -> str | None:
    return env.get("SENTRY_DSN", "").strip() or None


# The old scripts' retention, as documented ("Retention Policy"): daily backups 30 days (local),
# weekly 90 days (S3), monthly one year (S3 Glacier). RETENTION_DAYS, their one variable, is the
# daily window in both places when it is set.
TIER_DEFAULTS = {"TIER_DAILY_LOCAL_DAYS": 30, "TIER_DAILY_S3_DAYS": 30, "TIER_WEEKLY_LOCAL_DAYS": 0,
                 "TIER_WEEKLY_S3_DAYS": 90, "TIER_MONTHLY_LOCAL_DAYS": 0, "TIER_MONTHLY_S3_DAYS": 365}
STORAGE_CLASSES = ("STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA", "GLACIER_IR", "GLACIER",
                   "DEEP_ARCHIVE")
RETRIEVAL_TIERS = ("Expedited", "Standard", "Bulk")
# USD per GB-month, S3 us-east-1 list prices (2026); local disk is not priced unless S3_PRICES says so.
DEFAULT_PRICES = {"STANDARD": 0.023, "INTELLIGENT_TIERING": 0.023, "STANDARD_IA": 0.0125, "ONEZONE_IA": 0.01,
                  "GLACIER_IR": 0.004, "GLACIER": 0.0036, "DEEP_ARCHIVE": 0.00099, "LOCAL": 0.0}


def _storage_class(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip().upper() or default
    if value not in STORAGE_CLASSES:
        raise SetupError(f"{name}={value!r}: use one of {', '.join(STORAGE_CLASSES)}")
    return value


def prices(env: Mapping[str, str] = os.environ) -> dict[str, float]:
    """S3_PRICES="STANDARD=0.023,GLACIER=0.0036,LOCAL=0.05": USD per GB-month by class."""
    out = dict(DEFAULT_PRICES)
    for item in env.get("S3_PRICES", "").split(","):
        if not item.strip():
            continue
        cls, _, price = item.partition("=")
        try:
            out[cls.strip().upper()] = float(price)
        except ValueError:
            raise SetupError(f"S3_PRICES: {item.strip()!r} is not CLASS=price") from None
    return out


def tier_settings(env: Mapping[str, str] = os.environ) -> dict[str, object]:
    """The retention tiers as repository fields: {} unless RETENTION_TIERS is on or a TIER_*
    variable is set (then the old scripts' tiers are the defaults of those not set)."""
    if not (enabled(env, "RETENTION_TIERS") or any(k.startswith("TIER_") and v.strip() for k, v in env.items())):
        return {}
    daily = int_var(env, "RETENTION_DAYS", 30)
    fields: dict[str, object] = {"retention_tiers": True}
    for name, default in TIER_DEFAULTS.items():
        if name.startswith("TIER_DAILY_"):
            default = daily
        fields[name.lower().removeprefix("tier_")] = int_var(env, name, default)
    fields["weekly_class"] = _storage_class(env, "TIER_WEEKLY_CLASS", "STANDARD_IA")
    fields["monthly_class"] = _storage_class(env, "TIER_MONTHLY_CLASS", "GLACIER")
    retrieval = env.get("S3_RETRIEVAL_TIER", "").strip().capitalize() or "Standard"
    if retrieval not in RETRIEVAL_TIERS:
        raise SetupError(f"S3_RETRIEVAL_TIER={retrieval!r}: use Expedited, Standard or Bulk")
    fields["retrieval_tier"] = retrieval
    fields["prices"] = prices(env)
    return fields


def early_start_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """PGKEEPER_EARLY_START=0 keeps `pgkeeper backup` from starting its dump, and `pgkeeper
    base-backup` its pg_basebackup stream, before Prefect is imported (pgkeeper/early.py,
    pgkeeper/early_base.py); on by default."""
    return env.get("PGKEEPER_EARLY_START", "1").strip() != "0"

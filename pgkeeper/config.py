"""Where settings come from: named blocks when they exist, else the old scripts' variables
(parsed by pgkeeper.settings) turned into the same blocks `pgkeeper setup` would save.

Flags (flow parameters) override both. Passwords only ever come from a block's secret or
from POSTGRES_PASSWORD; they are never flow parameters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from prefect.blocks.core import Block
from pydantic import SecretStr

from pgkeeper import settings
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.connection import connection_fields
from pgkeeper.names import DEFAULT_CONNECTION_BLOCK as DEFAULT_CONNECTION_BLOCK
from pgkeeper.names import DEFAULT_REPOSITORY_BLOCK as DEFAULT_REPOSITORY_BLOCK
from pgkeeper.names import check_identifier
from pgkeeper.repository import retention_fields

B = TypeVar("B", bound=Block)


def load_block(cls: type[B], name: str | None) -> B | None:
    """The saved block `name`, or None when there is no such block."""
    if not name:
        return None
    try:
        return cls.load(name)  # type: ignore[return-value]
    except ValueError as exc:
        if "Unable to find block document" in str(exc):
            return None
        raise


def connection_from_env(env: Mapping[str, str] = os.environ) -> PostgresConnection:
    """The old scripts' POSTGRES_* variables as a connection."""
    return PostgresConnection(**connection_fields(env))


def repository_from_env(env: Mapping[str, str] = os.environ) -> BackupRepository:
    """The old scripts' BACKUP_DIR (and pgkeeper's compression choice) as a repository."""
    fields: dict[str, Any] = {"path": env.get("BACKUP_DIR", "/backups")}
    if env.get("PGKEEPER_COMPRESSION"):
        fields["compression"] = env["PGKEEPER_COMPRESSION"]
    fields.update(offsite_from_env(env))
    return BackupRepository(**fields)


def s3_bucket_block(target: settings.S3Target) -> tuple[Any, Callable[[Any], Any]]:
    """(AwsCredentials, a maker of the S3Bucket over saved credentials) for `target`: the one
    way both `pgkeeper setup` and the environment fallback describe a bucket."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    params = AwsClientParameters(endpoint_url=target.endpoint_url,
                                 config={"s3": {"addressing_style": "path"}} if target.path_style else None)
    credentials = AwsCredentials(
        aws_access_key_id=target.access_key_id,
        aws_secret_access_key=SecretStr(target.secret_access_key) if target.secret_access_key else None,
        aws_session_token=target.session_token, region_name=target.region, aws_client_parameters=params)
    return credentials, lambda saved: S3Bucket(bucket_name=target.bucket, bucket_folder=target.prefix,
                                               credentials=saved)


def offsite_from_env(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The old scripts' S3_BUCKET, S3_PREFIX, ENABLE_S3_UPLOAD, RETENTION_DAYS and the AWS_*
    variables as repository fields. Without AWS_ACCESS_KEY_ID, boto3's usual chain applies."""
    fields = retention_fields(env)
    target = settings.s3_from_env(env)
    if target is None:
        return fields
    credentials, make_bucket = s3_bucket_block(target)
    fields["offsite"] = make_bucket(credentials)
    fields["s3_encryption"] = target.sse
    fields["s3_kms_key_id"] = target.kms_key_id
    fields["s3_storage_class"] = target.storage_class
    fields["s3_upload"] = settings.s3_upload_enabled(env)
    return fields


def smtp_credentials_from_env(env: Mapping[str, str] = os.environ) -> Any:  # -> EmailServerCredentials
    from prefect_email import EmailServerCredentials

    fields = settings.smtp_settings(env)
    fields["password"] = SecretStr(str(fields["password"]))
    return EmailServerCredentials(**fields)


def notification_from_env(env: Mapping[str, str] = os.environ) -> Any:  # -> MailNotification | None
    """The mail block the old scripts' variables describe, or None when mail is off."""
    if not settings.mail_enabled(env):
        return None
    from pgkeeper.blocks.notify import MailNotification

    return MailNotification(credentials=smtp_credentials_from_env(env), recipients=settings.recipients(env),
                            sender=env.get("ALERT_FROM") or None, ui_url=settings.ui_url(env))


def _override(block: B, overrides: Mapping[str, Any]) -> B:
    changes = {k: v for k, v in overrides.items() if v is not None}
    return block.model_copy(update=changes) if changes else block


def load_connection(block_name: str | None = DEFAULT_CONNECTION_BLOCK, **overrides: Any) -> PostgresConnection:
    conn = load_block(PostgresConnection, block_name) or connection_from_env()
    conn = _override(conn, overrides)
    check_identifier("database", conn.database)
    return conn


def load_repository(block_name: str | None = DEFAULT_REPOSITORY_BLOCK, **overrides: Any) -> BackupRepository:
    repo = load_block(BackupRepository, block_name) or repository_from_env()
    return _override(repo, overrides)

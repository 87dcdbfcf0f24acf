"""Where settings come from: named blocks when they exist, else the old scripts' variables.

Flags (flow parameters) override both. Passwords only ever come from a block's secret or
from POSTGRES_PASSWORD; they are never flow parameters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from prefect.blocks.core import Block

from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.errors import BadName
from pgkeeper.names import check_identifier
from pgkeeper.tls import tls_from_env

DEFAULT_CONNECTION_BLOCK = "pgkeeper-db"
DEFAULT_REPOSITORY_BLOCK = "pgkeeper-repo"

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
    password = env.get("POSTGRES_PASSWORD")
    try:
        port = int(env.get("POSTGRES_PORT", "5432"))
    except ValueError:
        raise BadName(f"POSTGRES_PORT={env.get('POSTGRES_PORT')!r} is not a port number") from None
    return PostgresConnection(
        host=env.get("POSTGRES_HOST", "localhost"), port=port,
        user=env.get("POSTGRES_USER", "postgres"), password=password,  # type: ignore[arg-type]
        database=env.get("POSTGRES_DB", "postgres"), **tls_from_env(env),  # POSTGRES_SSLMODE, POSTGRES_SSLROOTCERT
    )


def repository_from_env(env: Mapping[str, str] = os.environ) -> BackupRepository:
    """The old scripts' BACKUP_DIR (and pgkeeper's compression choice) as a repository."""
    fields: dict[str, Any] = {"path": env.get("BACKUP_DIR", "/backups")}
    if env.get("PGKEEPER_COMPRESSION"):
        fields["compression"] = env["PGKEEPER_COMPRESSION"]
    fields.update(offsite_from_env(env))
    return BackupRepository(**fields)


def _env_number(env: Mapping[str, str], name: str) -> int | None:
    if not env.get(name):
        return None
    try:
        return int(env[name])
    except ValueError:
        raise BadName(f"{name}={env[name]!r} is not a whole number") from None


def offsite_from_env(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The old scripts' S3_BUCKET, S3_PREFIX, ENABLE_S3_UPLOAD, RETENTION_DAYS and the AWS_*
    variables as repository fields. Without AWS_ACCESS_KEY_ID, boto3's usual chain applies."""
    fields: dict[str, Any] = {}
    days = _env_number(env, "RETENTION_DAYS")
    if days is not None:
        fields["retention_days"] = days
    if not env.get("S3_BUCKET"):
        return fields
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    # MinIO, R2 and friends want path-style addressing; AWS itself is fine with it too.
    params = AwsClientParameters(endpoint_url=endpoint,
                                 config={"s3": {"addressing_style": "path"}} if endpoint else None)
    credentials = AwsCredentials(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"), aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"), aws_client_parameters=params)
    fields["offsite"] = S3Bucket(bucket_name=env["S3_BUCKET"], bucket_folder=env.get("S3_PREFIX", "").strip("/"),
                                 credentials=credentials)
    # The old scripts uploaded only with ENABLE_S3_UPLOAD=true; the bucket is still readable without it.
    fields["s3_upload"] = env.get("ENABLE_S3_UPLOAD", "").strip().lower() in ("1", "true", "yes", "on")
    return fields


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

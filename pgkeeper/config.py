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
        database=env.get("POSTGRES_DB", "postgres"),
    )


def repository_from_env(env: Mapping[str, str] = os.environ) -> BackupRepository:
    """The old scripts' BACKUP_DIR (and pgkeeper's compression choice) as a repository."""
    fields: dict[str, Any] = {"path": env.get("BACKUP_DIR", "/backups")}
    if env.get("PGKEEPER_COMPRESSION"):
        fields["compression"] = env["PGKEEPER_COMPRESSION"]
    return BackupRepository(**fields)


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

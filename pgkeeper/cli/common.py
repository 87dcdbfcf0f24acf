"""Options shared by several commands, and turning them into flow parameters."""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_connection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("database (overrides the connection block and POSTGRES_* variables)")
    g.add_argument("--database", "-d", help="database name (POSTGRES_DB)")
    g.add_argument("--host", help="server host (POSTGRES_HOST)")
    g.add_argument("--port", type=int, help="server port (POSTGRES_PORT)")
    g.add_argument("--user", help="role to connect as (POSTGRES_USER)")
    g.add_argument("--connection-block", default=None,
                   help="name of a saved pgkeeper-postgres-connection block (default pgkeeper-db)")


def add_repository_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("repository (overrides the repository block and BACKUP_DIR)")
    g.add_argument("--backup-dir", help="local repository directory (BACKUP_DIR)")
    g.add_argument("--repository-block", default=None,
                   help="name of a saved pgkeeper-backup-repository block (default pgkeeper-repo)")


def add_archive_args(p: argparse.ArgumentParser) -> None:
    """Reading a backup that retention tiers moved to an S3 archive class (GLACIER, DEEP_ARCHIVE)."""
    g = p.add_argument_group("archived backups (S3 GLACIER / DEEP_ARCHIVE)")
    g.add_argument("--wait-for-archive", action="store_true",
                   help="wait for S3's restore request (with progress) instead of stopping with when to come back")
    g.add_argument("--retrieval-tier", choices=["Expedited", "Standard", "Bulk"], default=None,
                   help="restore request tier (default: the repository's, S3_RETRIEVAL_TIER)")


def archive_params(args: argparse.Namespace) -> dict[str, Any]:
    return {"wait_for_archive": args.wait_for_archive, "retrieval_tier": args.retrieval_tier}


def connection_params(args: argparse.Namespace) -> dict[str, Any]:
    from pgkeeper.config import DEFAULT_CONNECTION_BLOCK

    return {
        "database": args.database, "host": args.host, "port": args.port, "user": args.user,
        "connection_block": args.connection_block or DEFAULT_CONNECTION_BLOCK,
    }


def repository_params(args: argparse.Namespace) -> dict[str, Any]:
    from pgkeeper.config import DEFAULT_REPOSITORY_BLOCK

    return {"backup_dir": args.backup_dir,
            "repository_block": args.repository_block or DEFAULT_REPOSITORY_BLOCK}


def needs_blocks(args: argparse.Namespace) -> bool:
    """Whether the repository must come from a block (and so from the Prefect API)."""
    return bool(args.repository_block) or not (args.backup_dir or os.environ.get("BACKUP_DIR"))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    from pgkeeper.fmt import table

    print(table(headers, rows))

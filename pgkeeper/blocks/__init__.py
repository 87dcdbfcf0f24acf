"""Prefect blocks: how pgkeeper is configured. Registered through `prefect.collections`."""

from pgkeeper.blocks.notify import MailNotification
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository

__all__ = ["BackupRepository", "MailNotification", "PostgresConnection"]

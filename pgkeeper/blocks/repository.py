"""The backup repository block: where backups live and how they are compressed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from pgkeeper.storage.local import LocalStorage


class BackupRepository(Block):
    """A local directory of backups (the catalog is the storage itself: a backup is a folder
    whose manifest.json was written last)."""

    _block_type_name = "pgkeeper backup repository"
    _block_type_slug = "pgkeeper-backup-repository"
    _description = "Where pgkeeper keeps backups: a local directory, compression settings."

    path: str = Field(default="/backups", description="Local directory of the repository.")
    compression: Literal["zstd", "gzip"] = Field(
        default="zstd", description="zstd (fast, small) or gzip (the old scripts' .gz).")
    compression_level: int | None = Field(
        default=None, description="Compressor level; default 1 for zstd, 6 for gzip.")
    dump_timeout_seconds: int = Field(
        default=6 * 3600, description="pg_dump is stopped if it runs longer than this.")
    min_free_fraction: float = Field(
        default=0.2, description="Warn when the repository disk has less free space than this.")

    def local(self) -> LocalStorage:
        return LocalStorage(Path(self.path))

    def storage(self, source: str = "local"):  # -> LocalStorage | S3Storage
        """The driver for `source` ('local' or 's3'). Both offer describe, list_backup_ids,
        read_manifest, write_manifest, open_file(backup_id, name) and delete_backup."""
        if source == "local":
            return self.local()
        if source == "s3":
            raise NotImplementedError("the S3 driver is not built yet")
        raise ValueError(f"unknown repository source {source!r}: use 'local' or 's3'")

    def level(self) -> int:
        if self.compression_level is not None:
            return self.compression_level
        return 1 if self.compression == "zstd" else 6

"""The backup repository block: where backups live and how they are compressed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from prefect_aws import S3Bucket
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

    # Offsite copies (issue 3): an S3Bucket from prefect-aws; its bucket_folder is the prefix.
    offsite: S3Bucket | None = Field(
        default=None, description="S3 bucket (prefect-aws S3Bucket with AwsCredentials) for offsite copies.")
    s3_upload: bool = Field(default=True, description="Upload each new backup to the offsite bucket.")
    s3_encryption: Literal["AES256", "aws:kms"] = Field(
        default="AES256", description="Server-side encryption of every object.")
    s3_kms_key_id: str | None = Field(default=None, description="KMS key id for aws:kms (else the default key).")
    s3_storage_class: str | None = Field(default=None, description="e.g. STANDARD_IA; default STANDARD.")
    s3_part_size_mb: int = Field(default=64, description="Multipart part size in MiB (at least 5).")
    s3_max_concurrency: int = Field(default=4, description="Parts uploaded in parallel.")
    s3_checksum: Literal["CRC32", "SHA256"] = Field(
        default="CRC32", description="Per-part checksum S3 verifies on arrival and pgkeeper compares after "
                                     "upload (the manifest's sha256 is checked on the same local pass).")
    gc_safety_hours: float = Field(
        default=24.0, description="Incomplete uploads and orphan objects younger than this are left alone.")

    # Retention (pgkeeper.retention): the same policy for the local directory and the bucket.
    retention_days: int = Field(default=30, description="Keep the newest backup of each of the last N days.")
    retention_weeks: int = Field(default=8, description="Keep the newest backup of each of the last N weeks.")
    retention_months: int = Field(default=12, description="Keep the newest backup of each of the last N months.")
    retention_min_count: int = Field(default=3, description="Always keep at least this many complete backups.")

    def local(self) -> LocalStorage:
        return LocalStorage(Path(self.path))

    def storage(self, source: str = "local"):  # -> LocalStorage | S3Storage
        """The driver for `source` ('local' or 's3'). Both offer describe, list_backup_ids,
        read_manifest, write_manifest, open_file(backup_id, name) and delete_backup."""
        if source == "local":
            return self.local()
        if source == "s3":
            return self.s3()
        raise ValueError(f"unknown repository source {source!r}: use 'local' or 's3'")

    def has_offsite(self) -> bool:
        """Whether new backups are to be copied to the offsite bucket."""
        return self.offsite is not None and self.s3_upload

    def s3(self):  # -> S3Storage
        from pgkeeper.errors import RepositoryError
        from pgkeeper.storage.s3 import MiB, S3Storage

        if self.offsite is None:
            raise RepositoryError("no offsite bucket is configured (set S3_BUCKET or the repository block's offsite)")
        return S3Storage(self.offsite, encryption=self.s3_encryption, kms_key_id=self.s3_kms_key_id,
                         storage_class=self.s3_storage_class, part_size=self.s3_part_size_mb * MiB,
                         max_concurrency=self.s3_max_concurrency, checksum_algorithm=self.s3_checksum)

    def retention_policy(self):  # -> pgkeeper.retention.RetentionPolicy
        from pgkeeper.retention import RetentionPolicy

        return RetentionPolicy(daily_days=self.retention_days, weekly_weeks=self.retention_weeks,
                               monthly_months=self.retention_months, min_count=self.retention_min_count)

    def level(self) -> int:
        if self.compression_level is not None:
            return self.compression_level
        return 1 if self.compression == "zstd" else 6

"""The backup repository block: where backups live and how they are compressed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from prefect_aws import S3Bucket
from pydantic import Field

from pgkeeper.settings import S3Target
from pgkeeper.storage.interface import Storage
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

    # Offsite copies: an S3Bucket from prefect-aws; its bucket_folder is the prefix.
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
    encryption: Literal["auto", "age", "off"] = Field(
        default="auto", description="Client-side encryption (age): 'auto' encrypts whenever offsite copies are on.")
    encryption_recipients: list[str] = Field(
        default_factory=list, description="Public keys (age1...) new backups and WAL are encrypted to; empty: "
                                          "those of `pgkeeper key create` (pgkeeper's key directory).")
    gc_safety_hours: float = Field(
        default=24.0, description="Incomplete uploads and orphan objects younger than this are left alone.")

    # Retention (pgkeeper.retention): the same policy for the local directory and the bucket.
    retention_days: int = Field(default=30, description="Keep the newest backup of each of the last N days.")
    retention_weeks: int = Field(default=8, description="Keep the newest backup of each of the last N weeks.")
    retention_months: int = Field(default=12, description="Keep the newest backup of each of the last N months.")
    retention_min_count: int = Field(default=3, description="Always keep at least this many complete backups.")

    # Retention tiers (pgkeeper.retention.TierPolicy): when on, they replace the windows above;
    # the minimum still applies. Defaults: the old scripts' daily 30 d local, weekly 90 d S3,
    # monthly 1 year S3 Glacier.
    retention_tiers: bool = Field(default=False, description="Apply the per-tier places, windows and classes.")
    daily_local_days: int = Field(default=30, description="Days a daily backup stays on local disk.")
    daily_s3_days: int = Field(default=30, description="Days a daily backup stays in the bucket.")
    weekly_local_days: int = Field(default=0, description="Days a weekly backup stays on local disk.")
    weekly_s3_days: int = Field(default=90, description="Days a weekly backup stays in the bucket.")
    weekly_class: str = Field(default="STANDARD_IA", description="S3 storage class of weekly backups.")
    monthly_local_days: int = Field(default=0, description="Days a monthly backup stays on local disk.")
    monthly_s3_days: int = Field(default=365, description="Days a monthly backup stays in the bucket.")
    monthly_class: str = Field(default="GLACIER", description="S3 class of monthly backups (GLACIER_IR, "
                                                               "GLACIER, DEEP_ARCHIVE).")
    retrieval_tier: Literal["Expedited", "Standard", "Bulk"] = Field(
        default="Standard", description="S3 restore-request tier for backups in an archive class.")
    prices: dict[str, float] = Field(default_factory=dict, description="USD per GB-month by storage class "
                                                                      "(weekly report); empty: list prices.")

    def tier_policy(self):  # -> pgkeeper.retention.TierPolicy
        from pgkeeper.retention import Tier, TierPolicy

        daily_class = (self.s3_storage_class or "STANDARD").upper()
        return TierPolicy(daily=Tier("daily", self.daily_local_days, self.daily_s3_days, daily_class),
                          weekly=Tier("weekly", self.weekly_local_days, self.weekly_s3_days, self.weekly_class),
                          monthly=Tier("monthly", self.monthly_local_days, self.monthly_s3_days,
                                       self.monthly_class),
                          min_count=self.retention_min_count)

    def local(self) -> LocalStorage:
        return LocalStorage(Path(self.path))

    def storage(self, source: str = "local") -> Storage:
        """The driver for `source` ('local' or 's3') behind encryption and signed manifests:
        the one door every byte goes through."""
        from pgkeeper.storage.sealed import SealedStorage

        if source == "local":
            return SealedStorage(self.local(), self.keyset())
        if source == "s3":
            return SealedStorage(self.s3(), self.keyset())
        raise ValueError(f"unknown repository source {source!r}: use 'local' or 's3'")

    def encrypts(self) -> bool:
        return self.encryption == "age" or (self.encryption == "auto" and self.has_offsite())

    def recipients(self) -> list[str]:
        """The public keys new files are encrypted to ([] when this repository does not encrypt)."""
        from pgkeeper import keys
        from pgkeeper.sealing import KeyMissing

        if not self.encrypts():
            return []
        found = list(self.encryption_recipients) or keys.recipients()
        if not found:
            raise KeyMissing("backups that go offsite are encrypted, and no key exists yet: run `pgkeeper key "
                             "create` (or set the repository's encryption to 'off')")
        return found

    def keyset(self):  # -> pgkeeper.storage.sealed.KeySet
        from pgkeeper import keys
        from pgkeeper.storage.sealed import KeySet

        mac = keys.mac_keys() or [bytes.fromhex(k) for k in _secret_lines(MANIFEST_KEY_BLOCK)]
        if not mac:
            mac = keys.mac_keys(create=True)
        return KeySet(self.recipients, mac,
                      identities=lambda: keys.identities() or _secret_lines(IDENTITIES_BLOCK))

    def wal_spool(self) -> str:
        """The local WAL archive (the spool wal-push writes): the repository's wal/."""
        return str(Path(self.path) / "wal")

    def has_offsite(self) -> bool:
        """Whether new backups are to be copied to the offsite bucket."""
        return self.offsite is not None and self.s3_upload

    def s3_target(self) -> S3Target | None:
        """The offsite bucket as plain settings (no prefect-aws needed to use them)."""
        if self.offsite is None:
            return None
        return s3_target_of(self.offsite, sse=self.s3_encryption, kms_key_id=self.s3_kms_key_id,
                            storage_class=self.s3_storage_class)

    def s3(self):  # -> S3Storage
        from pgkeeper.errors import RepositoryError
        from pgkeeper.storage.s3 import S3Storage
        from pgkeeper.storage.s3core import MiB

        target = self.s3_target()
        if target is None:
            raise RepositoryError("no offsite bucket is configured (set S3_BUCKET or the repository block's offsite)")
        return S3Storage(target, part_size=self.s3_part_size_mb * MiB, max_concurrency=self.s3_max_concurrency,
                         checksum_algorithm=self.s3_checksum)

    def retention_policy(self):  # -> pgkeeper.retention.RetentionPolicy
        from pgkeeper.retention import RetentionPolicy

        return RetentionPolicy(daily_days=self.retention_days, weekly_weeks=self.retention_weeks,
                               monthly_months=self.retention_months, min_count=self.retention_min_count)

    def level(self) -> int:
        if self.compression_level is not None:
            return self.compression_level
        return 1 if self.compression == "zstd" else 6


# Secret blocks that carry the keys to workers on other machines (`pgkeeper key create --blocks`).
IDENTITIES_BLOCK = "pgkeeper-age-identities"
MANIFEST_KEY_BLOCK = "pgkeeper-manifest-key"


def _secret_lines(name: str) -> list[str]:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError:
        return []
    return [ln.strip() for ln in str(value).splitlines() if ln.strip() and not ln.startswith("#")]


def s3_target_of(bucket: S3Bucket, **extra: str | None) -> S3Target:
    """A prefect-aws S3Bucket block (with its AwsCredentials) as the S3 core's settings."""
    creds = bucket.credentials
    params = getattr(creds, "aws_client_parameters", None)
    config = (getattr(params, "config", None) or {}) if params is not None else {}
    secret = getattr(creds, "aws_secret_access_key", None)
    token = getattr(creds, "aws_session_token", None)
    style = (config.get("s3") or {}).get("addressing_style") if isinstance(config, dict) else None
    return S3Target(
        bucket=bucket.bucket_name, prefix=bucket.bucket_folder or "",
        endpoint_url=getattr(params, "endpoint_url", None), region=getattr(creds, "region_name", None),
        access_key_id=getattr(creds, "aws_access_key_id", None),
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        session_token=token.get_secret_value() if hasattr(token, "get_secret_value") else token,
        path_style=None if style is None else style == "path",
        profile=getattr(creds, "profile_name", None), **extra)  # type: ignore[arg-type]

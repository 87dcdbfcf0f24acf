"""The backup repository block: where backups live and how they are compressed.

Its `offsite` field is a prefect-aws S3Bucket, and importing prefect-aws costs a process about
0.7 s and 26 MB (its package imports the ECS worker, aiobotocore, aiohttp). A repository without
a bucket never needs it: the field starts with a stand-in type that accepts None, and takes its
declared type, S3Bucket, the first time a bucket or the block's schema is asked for
(`with_bucket_type`). The schema, its checksum and the saved documents are those of
`offsite: S3Bucket | None`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Annotated, Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, PlainValidator
from pydantic.fields import FieldInfo

from pgkeeper.blocks.schema_cache import CachedSchema
from pgkeeper.repository import IDENTITIES_BLOCK, MANIFEST_KEY_BLOCK, RepositoryVerbs  # noqa: F401 (key_cmd)
from pgkeeper.settings import S3Target

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

OFFSITE_DESCRIPTION = "S3 bucket (prefect-aws S3Bucket with AwsCredentials) for offsite copies."
_typing = threading.Lock()


def _offsite_value(value: Any) -> Any:
    """`offsite` before the field has its declared type: None as it is; a bucket (a block or the
    data of a saved one) gives the field its type first, then is validated as an S3Bucket."""
    if value is None:
        return None
    return BackupRepository.with_bucket_type().__pydantic_validator__.validate_python(value)


# The stand-in type of `offsite` (see the module's docstring).
_STAND_IN = PlainValidator(_offsite_value)
LazyBucket = Annotated[Any, _STAND_IN]


class BackupRepository(CachedSchema, RepositoryVerbs, Block):
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
    # Declared type: S3Bucket | None (with_bucket_type); a stand-in until a bucket is seen.
    offsite: LazyBucket = Field(default=None, description=OFFSITE_DESCRIPTION)
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

    @classmethod
    def with_bucket_type(cls) -> type[S3Bucket]:
        """Give `offsite` its declared type, `S3Bucket | None` (importing prefect-aws), once per
        process; returns S3Bucket. From then on the class is exactly the block as declared."""
        from prefect_aws import S3Bucket

        with _typing:
            repo = BackupRepository  # the class that holds the field, also when called on a copy
            if _STAND_IN not in repo.__pydantic_fields__["offsite"].metadata:
                return S3Bucket
            declared = FieldInfo.from_annotated_attribute(S3Bucket | None,  # type: ignore[arg-type]
                                                          Field(default=None, description=OFFSITE_DESCRIPTION))
            repo.__pydantic_fields__ = {**repo.__pydantic_fields__, "offsite": declared}
            repo.model_rebuild(force=True)
        return S3Bucket

    # What needs the declared type: the schema (saving, registering, the UI) and registration,
    # which also registers the nested S3Bucket. Loading and using a repository without a bucket does not.
    @classmethod
    def __dispatch_key__(cls) -> str:
        return cls.get_block_type_slug()  # Block's default builds the whole schema for this

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        cls.with_bucket_type()
        return super().model_json_schema(*args, **kwargs)

    @classmethod
    async def aregister_type_and_schema(cls, *args: Any, **kwargs: Any) -> None:
        cls.with_bucket_type()
        await super().aregister_type_and_schema(*args, **kwargs)

    @classmethod
    def register_type_and_schema(cls, *args: Any, **kwargs: Any) -> Any:
        cls.with_bucket_type()
        return super().register_type_and_schema(*args, **kwargs)

    def s3_target(self) -> S3Target | None:
        """The offsite bucket as plain settings (no prefect-aws needed to use them)."""
        if self.offsite is None:
            return None
        return s3_target_of(self.offsite, sse=self.s3_encryption, kms_key_id=self.s3_kms_key_id,
                            storage_class=self.s3_storage_class)

    def secret_lines(self, name: str) -> list[str]:
        return secret_block_lines(name)


def secret_block_lines(name: str) -> list[str]:
    """The key lines of the Secret block `name` ([] when there is none)."""
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

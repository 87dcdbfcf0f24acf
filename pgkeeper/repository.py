"""The repository's verbs (storage drivers, keys, tiers) without Prefect, and the repository the
old scripts' variables describe as a plain object.

`BackupRepository` (the Prefect block) and `PlainRepository` share these verbs. Commands that
only read the repository with BACKUP_DIR set (`pgkeeper list`, `list --s3`, `metrics`) build a
`PlainRepository` from the environment: importing Prefect and prefect-aws for a block nobody
saved costs them 3-4 s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgkeeper import settings
from pgkeeper.errors import BadName

# Block secrets that carry the keys to workers on other machines (`pgkeeper key create --blocks`).
IDENTITIES_BLOCK = "pgkeeper-age-identities"
MANIFEST_KEY_BLOCK = "pgkeeper-manifest-key"


class RepositoryVerbs:
    """What a repository does with its settings. Subclasses hold the fields (see DEFAULTS) and
    give `s3_target()` and `secret_lines(name)`."""

    def s3_target(self) -> settings.S3Target | None:
        raise NotImplementedError

    def secret_lines(self, name: str) -> list[str]:
        raise NotImplementedError

    def tier_policy(self):  # -> pgkeeper.retention.TierPolicy
        from pgkeeper.retention import Tier, TierPolicy

        daily_class = (self.s3_storage_class or "STANDARD").upper()
        return TierPolicy(daily=Tier("daily", self.daily_local_days, self.daily_s3_days, daily_class),
                          weekly=Tier("weekly", self.weekly_local_days, self.weekly_s3_days, self.weekly_class),
                          monthly=Tier("monthly", self.monthly_local_days, self.monthly_s3_days,
                                       self.monthly_class),
                          min_count=self.retention_min_count)

    def local(self):  # -> LocalStorage
        from pgkeeper.storage.local import LocalStorage

        return LocalStorage(Path(self.path))

    def storage(self, source: str = "local"):  # -> Storage
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

        mac = keys.mac_keys() or [bytes.fromhex(k) for k in self.secret_lines(MANIFEST_KEY_BLOCK)]
        if not mac:
            mac = keys.mac_keys(create=True)
        return KeySet(self.recipients, mac,
                      identities=lambda: keys.identities() or self.secret_lines(IDENTITIES_BLOCK))

    def wal_spool(self) -> str:
        """The local WAL archive (the spool wal-push writes): the repository's wal/."""
        return str(Path(self.path) / "wal")

    def has_offsite(self) -> bool:
        """Whether new backups are to be copied to the offsite bucket."""
        return self.offsite is not None and self.s3_upload

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


# The block's defaults, field by field (tests/test_list_fast.py holds the two together).
DEFAULTS: dict[str, Any] = {
    "path": "/backups", "compression": "zstd", "compression_level": None, "dump_timeout_seconds": 6 * 3600,
    "min_free_fraction": 0.2, "offsite": None, "s3_upload": True, "s3_encryption": "AES256",
    "s3_kms_key_id": None, "s3_storage_class": None, "s3_part_size_mb": 64, "s3_max_concurrency": 4,
    "s3_checksum": "CRC32", "encryption": "auto", "encryption_recipients": [], "gc_safety_hours": 24.0,
    "retention_days": 30, "retention_weeks": 8, "retention_months": 12, "retention_min_count": 3,
    "retention_tiers": False, "daily_local_days": 30, "daily_s3_days": 30, "weekly_local_days": 0,
    "weekly_s3_days": 90, "weekly_class": "STANDARD_IA", "monthly_local_days": 0, "monthly_s3_days": 365,
    "monthly_class": "GLACIER", "retrieval_tier": "Standard", "prices": {},
}
COMPRESSIONS = ("zstd", "gzip")


class PlainRepository(RepositoryVerbs):
    """A repository's settings as plain attributes; `offsite` is an S3Target (or None)."""

    def __init__(self, **fields: Any) -> None:
        unknown = set(fields) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown repository fields: {', '.join(sorted(unknown))}")
        for name, default in DEFAULTS.items():
            value = fields.get(name, default)
            setattr(self, name, value.copy() if isinstance(value, list | dict) else value)
        if self.compression not in COMPRESSIONS:
            raise BadName(f"compression {self.compression!r}: use zstd or gzip")

    def s3_target(self) -> settings.S3Target | None:
        return self.offsite

    def secret_lines(self, name: str) -> list[str]:
        """Keys saved as Secret blocks, asked for only when a Prefect API is configured and the
        key directory has none (without an API, Prefect would start a slow temporary server)."""
        from pgkeeper.local_server import configured_api_url

        if not configured_api_url():
            return []
        from pgkeeper.blocks.repository import secret_block_lines

        return secret_block_lines(name)


def retention_fields(env: Mapping[str, str]) -> dict[str, Any]:
    """RETENTION_DAYS and the retention tier variables as repository fields (block or plain)."""
    fields: dict[str, Any] = {}
    try:
        if env.get("RETENTION_DAYS", "").strip():
            fields["retention_days"] = settings.int_var(env, "RETENTION_DAYS", 30)
        fields.update(settings.tier_settings(env))
    except settings.SetupError as exc:
        raise BadName(str(exc)) from None
    return fields


def repository_from_env(env: Mapping[str, str] = os.environ, path: str | None = None) -> PlainRepository:
    """The old scripts' BACKUP_DIR, PGKEEPER_COMPRESSION, RETENTION_DAYS, tier and S3 variables as
    a repository; the same values pgkeeper.config.repository_from_env puts into a block."""
    fields: dict[str, Any] = {"path": path or env.get("BACKUP_DIR", "/backups")}
    if env.get("PGKEEPER_COMPRESSION"):
        fields["compression"] = env["PGKEEPER_COMPRESSION"]
    fields.update(retention_fields(env))
    target = settings.s3_from_env(env)
    if target is not None:
        fields.update(offsite=target, s3_encryption=target.sse, s3_kms_key_id=target.kms_key_id,
                      s3_storage_class=target.storage_class, s3_upload=settings.s3_upload_enabled(env))
    return PlainRepository(**fields)

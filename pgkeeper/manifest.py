"""The manifest: everything needed to trust and restore a backup, stored beside its files.

No database of our own: the repository (local or S3) is the catalog.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

FORMAT_VERSION = 1


def globals_file_name(compression: str) -> str:
    """The roles file stored beside a logical dump (compressed like it)."""
    return "globals.json" + {"zstd": ".zst", "gzip": ".gz"}.get(compression, "")


class StoredFile(BaseModel):
    name: str
    size: int = Field(description="Bytes as stored (compressed, encrypted).")
    sha256: str = Field(description="sha256 of the stored bytes.")
    raw_size: int | None = Field(default=None, description="Bytes before compression.")
    encryption: str | None = Field(default=None, description="'age' when encrypted (compressed first).")
    key_fingerprints: list[str] = Field(default_factory=list, description="Fingerprints of the public keys it is "
                                                              "encrypted to (pgkeeper key list).")


class DatabaseGrant(BaseModel):
    grantee: str | None = Field(description="role name; None means PUBLIC")
    privilege: str = Field(description="CONNECT, TEMPORARY or CREATE")
    grantable: bool = False


class DatabaseProperties(BaseModel):
    """What CREATE/ALTER DATABASE sets and a plain pg_dump does not carry: taken at backup time so
    a restore, on this server or a new one, gives the database back as it was."""

    owner: str
    encoding: str
    locale_provider: Literal["libc", "icu"] = "libc"
    collate: str
    ctype: str
    icu_locale: str | None = None
    connection_limit: int = -1
    tablespace: str = "pg_default"
    comment: str | None = None
    acl: list[DatabaseGrant] | None = Field(default=None, description="None: the default privileges")
    settings: list[str] = Field(default_factory=list, description="ALTER DATABASE ... SET, as stored (k=v)")
    role_settings: dict[str, list[str]] = Field(default_factory=dict,
                                                description="ALTER ROLE r IN DATABASE ... SET, per role")


class Verification(BaseModel):
    at: datetime
    method: str = Field(description="'quick' (checksum, format) or 'restore' (a restore drill).")
    ok: bool
    restore_seconds: float | None = None
    # PITR drills ('pitr-drill'): the last replayed transaction's time, and how far it was
    # behind the source's clock when the drill ended (the RPO achieved).
    recovered_to: datetime | None = None
    rpo_seconds: float | None = None
    checks: dict[str, str] = Field(default_factory=dict, description="check name -> PASS/FAIL detail")


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    backup_id: str
    kind: Literal["logical", "physical"] = "logical"
    database: str
    server_version: str
    system_identifier: str | None = None
    # The server it came from (names.server_key, also in the backup id), and its host and port as
    # the connection gave them. None in backups made before: they group as server "unknown".
    server: str | None = None
    host: str | None = None
    port: int | None = None
    tool_version: str
    started_at: datetime
    finished_at: datetime
    start_lsn: str | None = None
    stop_lsn: str | None = None
    timeline: int | None = None
    wal_segment_size: int | None = Field(default=None, description="Physical backups: bytes per WAL segment.")
    compression: str
    encryption: str | None = None
    size: int = Field(description="Total stored bytes of all files.")
    raw_size: int | None = None
    database_size: int | None = Field(default=None, description="pg_database_size at backup time.")
    files: list[StoredFile]
    tables: dict[str, int] = Field(default_factory=dict,
                                   description="schema.table -> rows, counted in the dump's snapshot")
    objects: dict[str, int] = Field(default_factory=dict,
                                    description="tables, indexes, sequences, constraints")
    labels: list[str] = Field(default_factory=list, description="e.g. 'pre-restore'")
    database_properties: DatabaseProperties | None = None
    roles: list[str] = Field(default_factory=list,
                             description="roles the database's objects, grants and settings name")
    dump_settings: dict[str, str] = Field(default_factory=dict,
                                          description="output settings of pg_dump's session (TimeZone, ...)")
    verifications: list[Verification] = Field(default_factory=list)
    # Set by tiered retention in the copy it manages (the bucket's manifest stays in a standard
    # class, so listing reads these without a restore request).
    tier: str | None = Field(default=None, description="daily, weekly or monthly")
    storage_class: str | None = Field(default=None, description="S3 class of the data files; None: the default")

    @property
    def dump_file(self) -> StoredFile:
        """The archive of a logical backup (the other file, if any, is the roles file)."""
        dumps = [f for f in self.files if f.name != globals_file_name(self.compression)]
        if len(dumps) != 1:
            from pgkeeper.errors import RepositoryError

            raise RepositoryError(f"{self.backup_id}: expected one dump file, manifest lists {len(dumps)}")
        return dumps[0]

    @property
    def globals_file(self) -> StoredFile | None:
        return next((f for f in self.files if f.name == globals_file_name(self.compression)), None)

    @property
    def server_group(self) -> str:
        """The server this backup counts under for `latest`, retention and `list`."""
        from pgkeeper.names import UNKNOWN_SERVER

        return self.server or UNKNOWN_SERVER

    @property
    def retention_group(self) -> str:
        """What retention keeps N of: kind and database, per server (`logical/crm@<server>`); backups
        that name no server keep the group they always had (`logical/crm`)."""
        return f"{self.kind}/{self.database}" + (f"@{self.server}" if self.server else "")

    @property
    def server_label(self) -> str:
        """host:port (system identifier) for people; 'unknown' for backups that did not record it."""
        if not self.server:
            return self.server_group
        where = f"{self.host}:{self.port}" if self.host else self.server
        return f"{where} ({self.system_identifier})" if self.system_identifier else where

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def ratio(self) -> float | None:
        """How much smaller than the raw dump the stored backup is (raw / stored)."""
        return self.raw_size / self.size if self.raw_size and self.size else None

    @property
    def status(self) -> str:
        """'verified' once a restore drill passed, 'failed' if the last check failed."""
        if not self.verifications:
            return "unverified"
        last = self.verifications[-1]
        if not last.ok:
            return "failed"
        if any(v.ok and v.method in ("restore", "pitr-drill") for v in self.verifications):
            return "verified"
        return "checked"

    @property
    def last_restore_seconds(self) -> float | None:
        for v in reversed(self.verifications):
            if v.ok and v.restore_seconds is not None:
                return v.restore_seconds
        return None

    @property
    def last_drill(self) -> Verification | None:
        """The newest passed PITR drill (RTO in restore_seconds, RPO in rpo_seconds)."""
        for v in reversed(self.verifications):
            if v.ok and v.method == "pitr-drill":
                return v
        return None

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.finished_at).total_seconds()

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=2).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        return cls.model_validate_json(data)

"""The five checks of a verification, and the record of their outcome.

Each check task raises a PgkeeperError when its check fails (so the task is red in the UI);
the flow turns that into a FAIL line and goes on with the checks that do not depend on it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from pgkeeper import anomaly, pgtools
from pgkeeper.alerts import warn
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups, resolve_backup
from pgkeeper.errors import ConnectionFailed, IntegrityError, PgkeeperError, RepositoryError
from pgkeeper.errors import VerificationFailed as VerificationFailed  # callers import it from here
from pgkeeper.fmt import contents, human_bytes, human_seconds
from pgkeeper.manifest import Manifest
from pgkeeper.pgdb import database_differences
from pgkeeper.tasks.drill import DrillResult
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tasks.verify import UnreadableDump, check_table_count, read_dump_toc, toc_kinds
from pgkeeper.workfile import materialize_dump

Status = Literal["PASS", "FAIL", "SKIP"]

# Test number -> (key in Verification.checks, short title used when it fails or is skipped)
CHECKS: dict[int, tuple[str, str]] = {
    1: ("integrity", "file integrity"),
    2: ("format", "dump format"),
    3: ("restore", "restore into a scratch database"),
    4: ("data", "data"),
    5: ("freshness", "freshness"),
}
LINE_WIDTH = 52


class CheckResult(BaseModel):
    number: int
    status: Status
    title: str = Field(description="what was checked and what was found, one line")
    inconclusive: bool = Field(default=False, description="failed for want of a server or storage, "
                                                          "not because of the backup")

    @property
    def key(self) -> str:
        return CHECKS[self.number][0]

    @property
    def ok(self) -> bool:
        return self.status == "PASS"

    def line(self) -> str:
        head = f"Test {self.number}: {self.title} "
        return head + "." * max(3, LINE_WIDTH - len(head)) + f" {self.status}"

    @classmethod
    def failed(cls, number: int, error: BaseException) -> CheckResult:
        # An unreachable server or bucket, or a full work disk, says nothing about the backup.
        return cls(number=number, status="FAIL", title=f"{CHECKS[number][1]}: {error}",
                   inconclusive=isinstance(error, ConnectionFailed | RepositoryError))

    @classmethod
    def skipped(cls, number: int, why: str) -> CheckResult:
        return cls(number=number, status="SKIP", title=f"{CHECKS[number][1]} ({why})")


class VerifyReport(BaseModel):
    backup_id: str
    database: str
    source: str
    method: Literal["restore", "quick"]
    checks: list[CheckResult]
    restore_seconds: float | None = Field(default=None, description="measured RTO: fetch + restore")
    scratch_server: str | None = Field(default=None, description="where the restore drill ran")
    anomalies: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "FAIL" for c in self.checks)

    @property
    def backup_ok(self) -> bool:
        """The backup itself is sound (tests 1-4); freshness is about the repository."""
        return all(c.status != "FAIL" for c in self.checks if c.number != 5)

    @property
    def inconclusive(self) -> bool:
        """The backup could not be judged (nothing is recorded in its manifest)."""
        return any(c.inconclusive for c in self.checks if c.number != 5)

    def lines(self) -> list[str]:
        out = [c.line() for c in self.checks]
        if self.inconclusive:
            failed = ", ".join(str(c.number) for c in self.checks if c.inconclusive)
            out.append(f"Verification of {self.backup_id} could not finish (test {failed}); "
                       "nothing recorded in its manifest.")
        elif self.ok and self.method == "restore":
            out.append(f"Backup is valid and restorable. RTO measured: {human_seconds(self.restore_seconds)}.")
        elif self.ok:
            out.append("Backup file is intact and readable (restore not tested).")
        else:
            failed = ", ".join(str(c.number) for c in self.checks if c.status == "FAIL")
            out.append(f"Backup {self.backup_id} FAILED verification (test {failed}).")
        return out


class Fetched(BaseModel):
    path: str
    raw_size: int
    seconds: float


class Catalog(BaseModel):
    target: Manifest
    backups: list[Manifest] = Field(description="every complete backup of the target's database, oldest first")


@task(name="resolve-backup", cache_policy=NO_CACHE, **RETRYABLE)
def resolve_for_verify(repo: BackupRepository, source: str, ref: str, database: str | None,
                       server: str | None = None, prefer: tuple[str, ...] = ()) -> Catalog:
    """The backup the user means, and the other backups of its database and server (freshness,
    anomalies)."""
    storage = repo.storage(source)
    target = resolve_backup(storage, ref, database, kind="logical", server=server, prefer=prefer)
    if target.kind != "logical":
        raise PgkeeperError(f"backup {target.backup_id} is a {target.kind} backup: verify restores "
                            "logical dumps only")
    return Catalog(target=target, backups=list_backups(storage, target.database, kind="logical",
                                                       server=target.server_group))


@task(name="fetch-dump", cache_policy=NO_CACHE, **RETRYABLE)
def fetch_dump(repo: BackupRepository, source: str, manifest: Manifest, work_dir: str) -> Fetched:
    """Test 1: read the stored file back, decompress it and check its sha256 (into a work file)."""
    file = manifest.dump_file
    label = f"{manifest.backup_id}/{file.name}"
    dest = Path(work_dir) / f"{manifest.backup_id}.dump"
    free = shutil.disk_usage(work_dir).free
    if file.raw_size is not None and free < file.raw_size:
        # Not the backup's fault: say so rather than fail it on a half-written work file.
        raise RepositoryError(f"{work_dir} has {human_bytes(free)} free, the archive needs "
                              f"{human_bytes(file.raw_size)}: give verify a work_dir with more space")
    started = time.monotonic()
    with contextlib.closing(repo.storage(source).open_plain(manifest.backup_id, file)) as stream:
        materialize_dump(stream, file, manifest.compression, dest, label)
    raw = dest.stat().st_size
    if file.raw_size is not None and raw != file.raw_size:
        raise IntegrityError(f"{label}: decompressed to {raw} bytes, manifest says {file.raw_size}")
    return Fetched(path=str(dest), raw_size=raw, seconds=time.monotonic() - started)


def integrity_passed(manifest: Manifest) -> CheckResult:
    file = manifest.dump_file
    if file.encryption:  # the drill proves the key in hand opens this backup
        return CheckResult(number=1, status="PASS", title=f"file integrity (sha256, decryption with key "
                                                          f"{', '.join(file.key_fingerprints)}, decompression)")
    return CheckResult(number=1, status="PASS", title="file integrity (sha256, decompression)")


def restore_passed(drill: DrillResult) -> CheckResult:
    return CheckResult(number=3, status="PASS",
                       title=f"restore into a scratch database ({human_seconds(drill.restore_seconds)})")


def _format_result(manifest: Manifest, toc: dict[str, int]) -> CheckResult:
    found = check_table_count(toc, len(manifest.tables))
    return CheckResult(number=2, status="PASS",
                       title=f"dump format: {contents(found, manifest.objects.get('indexes', 0))}")


@task(name="check-format", cache_policy=NO_CACHE)
def check_format(manifest: Manifest, archive: str) -> CheckResult:
    """Test 2: pg_restore reads the archive's table of contents and it holds every table."""
    try:
        listing = pgtools.run([pgtools.tool("pg_restore"), "--list", archive], timeout=600)
    except pgtools.ToolFailed as exc:
        raise UnreadableDump(f"{manifest.backup_id}/{manifest.dump_file.name}: pg_restore cannot read it "
                             f"({exc})") from None
    return _format_result(manifest, dict(toc_kinds(listing)))


@task(name="check-integrity-and-format", cache_policy=NO_CACHE, **RETRYABLE)
def check_stream(repo: BackupRepository, source: str, manifest: Manifest) -> CheckResult:
    """Tests 1 and 2 in one pass without a work file (no restore drill): hash, decompress, list."""
    quick = read_dump_toc(repo, manifest.backup_id, manifest.dump_file, manifest.compression, source)
    return _format_result(manifest, quick.toc)


@task(name="check-data", cache_policy=NO_CACHE)
def check_data(manifest: Manifest, drill: DrillResult) -> CheckResult:
    """Test 4: the restored copy holds the backup's schema, grants, data and database properties
    (compared entry by entry with the archive), and every count equals what the dump's snapshot saw."""
    tables, objects = drill.tables, drill.objects
    if drill.differences:
        more = f" (and {len(drill.differences) - 3} more)" if len(drill.differences) > 3 else ""
        raise IntegrityError("the restored copy differs from the backup: " + "; ".join(drill.differences[:3]) + more)
    wrong = sorted(t for t in set(manifest.tables) | set(tables) if manifest.tables.get(t) != tables.get(t))
    diffs = database_differences(manifest.tables, manifest.objects, tables, objects)
    if diffs:
        raise IntegrityError(f"{len(wrong)} of {len(manifest.tables)} tables differ "
                             f"({', '.join(wrong) or 'none'}): " + "; ".join(diffs))
    n = len(manifest.tables)
    what = ("schema, grants, data and properties equal" if drill.content_compared
            else "row counts equal (content not recorded by this backup)")
    return CheckResult(number=4, status="PASS", title=f"data: {n}/{n} tables, {what}")


def freshness(backups: Sequence[Manifest], max_age_hours: float, now: datetime | None = None) -> CheckResult:
    """Test 5: the newest backup of the database is younger than the limit."""
    if not backups:
        raise PgkeeperError("no complete backup to judge freshness by")
    newest = max(backups, key=lambda m: m.finished_at)
    age = newest.age_seconds(now)
    limit = f"limit {max_age_hours:g} h"
    if age > max_age_hours * 3600:
        raise PgkeeperError(f"newest backup {newest.backup_id} is {human_seconds(age)} old ({limit})")
    return CheckResult(number=5, status="PASS", title=f"freshness: {human_seconds(max(age, 0))} old ({limit})")


@task(name="check-freshness", cache_policy=NO_CACHE)
def check_freshness(backups: list[Manifest], max_age_hours: float) -> CheckResult:
    return freshness(backups, max_age_hours)


@task(name="check-anomalies", cache_policy=NO_CACHE)
def check_anomalies(target: Manifest, backups: list[Manifest], threshold: float) -> list[str]:
    """Warn (the run still completes) when the backup shrank against the last verified one."""
    previous = anomaly.previous_verified(backups, target)
    if previous is None:
        get_run_logger().info("no earlier verified backup of %s to compare sizes with", target.database)
        return []
    found = anomaly.find_anomalies(previous, target, threshold)
    if found:
        warn("anomaly", anomaly.describe(previous, target, found), database=target.database,
             backup_id=target.backup_id, previous_backup_id=previous.backup_id, anomalies=found,
             threshold=threshold)
    return found

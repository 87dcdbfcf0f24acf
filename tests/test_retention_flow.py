"""The retention flow and command over real repositories: a local directory and a moto bucket."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups
from pgkeeper.manifest import Manifest, Verification
from pgkeeper.names import backup_id_time, new_backup_id
from pgkeeper.retention import plan, to_remove
from pgkeeper.tasks.retention import backup_records
from tests.helpers import run_cli_here

NEWEST = datetime(2024, 3, 15, 2, 0, 0, tzinfo=UTC)


def make_backup(repo: BackupRepository, backup_id: str, files: dict[str, bytes], database: str = "crm",
                verified: bool | None = None, labels: list[str] | None = None, compression: str = "none",
                ) -> Manifest:
    """A complete backup written through the repository's storage (manifest last, signed), without pg_dump."""
    storage = repo.storage()
    storage.ensure_writable()
    storage.begin_backup(backup_id)
    stored = []
    for name, data in files.items():
        with storage.write_file(backup_id, name) as f:
            f.write(data)
        stored.append(storage.stored_file(name, f))
    at = backup_id_time(backup_id)
    checks = [Verification(at=at, method="quick", ok=True)]
    if verified is not None:
        checks.append(Verification(at=at, method="restore", ok=verified, restore_seconds=1.0))
    m = Manifest(backup_id=backup_id, database=database, server_version="15", tool_version="test",
                 started_at=at, finished_at=at + timedelta(seconds=5), compression=compression,
                 size=sum(f.size for f in stored), files=stored, labels=labels or [], verifications=checks)
    storage.finish_backup(backup_id, m.to_bytes())
    return m


def daily_history(repo: BackupRepository, days: int, verified_day: int | None = None) -> list[str]:
    ids = []
    for d in range(days):
        backup_id = new_backup_id(NEWEST - timedelta(days=d))
        make_backup(repo, backup_id, {"crm.dump": f"day {d}".encode()},
                    verified=True if d == verified_day else None)
        ids.append(backup_id)
    return sorted(ids)


def s3_env(endpoint: str, bucket: str, prefix: str) -> dict[str, str]:
    return {"S3_BUCKET": bucket, "S3_PREFIX": prefix, "ENABLE_S3_UPLOAD": "true", "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def test_retention_command_dry_run_then_real_run_on_the_local_repository(tmp_path: Path):
    repo = BackupRepository(path=str(tmp_path / "repo"), retention_days=7)
    ids = daily_history(repo, 40, verified_day=35)  # the only restore-verified backup is old
    expected_removed = to_remove(plan(backup_records(repo.local())[0], repo.retention_policy()))
    assert 0 < len(expected_removed) < 40
    env = {"BACKUP_DIR": repo.path, "RETENTION_DAYS": "7"}

    dry = run_cli_here("retention", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"kept {40 - len(expected_removed)}, would remove {len(expected_removed)} (dry run)" in dry.stdout
    assert [m.backup_id for m in list_backups(repo.local())] == ids  # nothing touched

    real = run_cli_here("retention", env=env)
    assert real.returncode == 0, real.stderr
    assert f"kept {40 - len(expected_removed)}, removed {len(expected_removed)}" in real.stdout
    left = [m.backup_id for m in list_backups(repo.local())]
    assert left == sorted(set(ids) - set(expected_removed))
    # The newest verified backup (35 days old) survived; so did the whole last week.
    assert new_backup_id(NEWEST - timedelta(days=35)) in left
    assert all(new_backup_id(NEWEST - timedelta(days=d)) in left for d in range(7))
    # Removed folders are gone from disk, not just from the listing.
    assert sorted(p.name for p in (Path(repo.path) / "backups").iterdir()) == left

    again = run_cli_here("retention", env=env)
    assert "removed 0" in again.stdout


def test_nothing_is_removed_while_the_newest_backup_is_incomplete(tmp_path: Path):
    from pgkeeper.flows.retention import retention

    repo = BackupRepository(path=str(tmp_path / "repo"), retention_days=3, retention_weeks=0,
                            retention_months=0, retention_min_count=1)
    ids = daily_history(repo, 10)
    crashed = new_backup_id(NEWEST + timedelta(hours=1))
    (Path(repo.path) / "backups" / crashed).mkdir()  # a backup that died before its manifest
    name = "ret-" + uuid.uuid4().hex[:8]
    repo.save(name)
    [report] = retention(repository_block=name, sources=["local"], gc_safety_hours=0)
    assert report.removed == []
    assert "incomplete" in report.reasons[ids[0]]
    assert [m.backup_id for m in list_backups(repo.local())] == ids
    # Garbage collection ran after retention: the crashed folder is gone, so next time proceeds.
    assert not (Path(repo.path) / "backups" / crashed).exists()
    [report] = retention(repository_block=name, sources=["local"])
    assert len(report.removed) == 7


def test_a_failed_newest_verification_keeps_everything(tmp_path: Path):
    from pgkeeper.flows.retention import retention

    repo = BackupRepository(path=str(tmp_path / "repo"), retention_days=2, retention_weeks=0,
                            retention_months=0, retention_min_count=1)
    daily_history(repo, 6)
    make_backup(repo, new_backup_id(NEWEST + timedelta(hours=3)), {"crm.dump": b"bad"}, verified=False)
    name = "ret-" + uuid.uuid4().hex[:8]
    repo.save(name)
    [report] = retention(repository_block=name, sources=["local"])
    assert report.removed == [] and len(report.kept) == 7
    assert all("failed its last verification" in r for r in report.reasons.values())


@pytest.mark.usefixtures("s3_endpoint")
def test_the_same_policy_applies_to_the_bucket(tmp_path: Path, s3_endpoint: str, s3_bucket: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from pgkeeper.config import repository_from_env
    from pgkeeper.tasks.offsite import upload_backup

    env = {**s3_env(s3_endpoint, s3_bucket, "retention"), "BACKUP_DIR": str(tmp_path / "repo"),
           "RETENTION_DAYS": "5"}
    repo = repository_from_env(env)
    assert repo.has_offsite() and repo.retention_days == 5
    ids = daily_history(repo, 12)
    make_backup(repo, new_backup_id(NEWEST - timedelta(days=40)), {"crm.dump": b"before restore"},
                labels=["pre-restore"])
    for backup_id in sorted(repo.local().list_backup_ids()):
        upload_backup(repo, backup_id)
    s3 = repo.storage("s3")
    before = s3.list_backup_ids()
    assert len(before) == 13
    expected_removed = to_remove(plan(backup_records(s3)[0], repo.retention_policy()))
    assert expected_removed, "the history is long enough for something to go"

    result = run_cli_here("retention", "--s3", env=env)
    assert result.returncode == 0, result.stderr
    assert f"retention of s3://{s3_bucket}/retention" in result.stdout
    assert f"removed {len(expected_removed)}" in result.stdout
    assert s3.list_backup_ids() == sorted(set(before) - set(expected_removed))
    # Nothing of a removed backup is left in the bucket, and the local copies were not touched.
    leftovers = [o.name for o in s3.list_objects() if o.name.split("/")[1] in expected_removed]
    assert leftovers == []
    assert len(repo.local().list_backup_ids()) == 13
    assert ids[-1] in s3.list_backup_ids()

    # The run's report is a table artifact with one row per backup and its reason.

    async def artifact_rows():
        async with get_client() as client:
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retention-s3"])), limit=1,
                sort="CREATED_DESC")
            return arts[0].data

    data = asyncio.run(artifact_rows())
    rows = data if isinstance(data, list) else json.loads(data)
    assert {r["backup"] for r in rows} == set(before)
    assert all(r["reason"] for r in rows)
    assert {r["backup"] for r in rows if r["decision"] == "removed"} == set(expected_removed)

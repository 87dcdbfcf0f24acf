"""Retention tiers on a bucket (moto over HTTP): weeklies and monthlies move to their classes by
server-side copy, dailies expire after their window while the monthly stays, and reading an
archived backup goes through S3's restore request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from pgkeeper.catalog import list_backups
from pgkeeper.errors import RepositoryError
from pgkeeper.names import new_backup_id
from pgkeeper.tasks.archive import make_readable
from pgkeeper.tasks.offsite import copy_backup
from pgkeeper.tasks.retention import retain
from tests.helpers import run_cli
from tests.test_retention_flow import make_backup, s3_env
from tests.test_s3_offsite import s3_repo

START = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)  # a Saturday
DAYS = 45


def test_tiers_move_objects_to_their_classes_and_expire_dailies(tmp_path: Path, s3_endpoint: str,
                                                                 s3_bucket: str) -> None:
    # Short windows so that a month and a half shows every tier: dailies 3 days, weeklies 14
    # days in STANDARD_IA, monthlies 60 days in GLACIER.
    repo = s3_repo(tmp_path, s3_endpoint, s3_bucket, "tiers", retention_tiers=True, daily_local_days=3,
                   daily_s3_days=3, weekly_s3_days=14, monthly_s3_days=60, retention_min_count=1)
    local, s3 = repo.storage("local"), repo.storage("s3")
    ids = []
    for day in range(DAYS):
        at = START + timedelta(days=day)
        backup_id = new_backup_id(at)
        make_backup(repo, backup_id, {"crm.dump": f"day {day}".encode() * 100})
        copy_backup(local, s3, backup_id)
        ids.append(backup_id)
    now = START + timedelta(days=DAYS - 1)
    report, _, _ = retain(repo, s3, "s3", False, [], now)
    local_report, _, _ = retain(repo, local, "local", False, [], now)

    monthly = new_backup_id(START + timedelta(days=30))  # 2025-03-31: the newest of March
    weekly = new_backup_id(START + timedelta(days=36))  # Sunday 2025-04-06: the newest of its ISO week
    daily_gone = new_backup_id(START + timedelta(days=35))  # a Saturday, 9 days old: past the daily window
    kept = {m.backup_id: m for m in list_backups(s3)}
    assert monthly in kept and weekly in kept and daily_gone not in kept
    assert set(kept) == {monthly, weekly, *ids[-3:]}
    assert report.moved == {monthly: "GLACIER", weekly: "STANDARD_IA"}
    # Locally only the dailies stay: the bucket holds the longer windows.
    assert [m.backup_id for m in list_backups(local)] == ids[-3:]
    assert daily_gone in local_report.removed

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    def head(backup_id: str, name: str) -> dict:
        return client.head_object(Bucket=s3_bucket, Key=f"tiers/backups/{backup_id}/{name}")

    assert head(monthly, "crm.dump")["StorageClass"] == "GLACIER"
    assert head(weekly, "crm.dump")["StorageClass"] == "STANDARD_IA"
    assert "StorageClass" not in head(ids[-1], "crm.dump")  # STANDARD
    # The manifests stay in the standard class and say tier and class: listing needs no restore.
    assert "StorageClass" not in head(monthly, "manifest.json")
    assert (kept[monthly].tier, kept[monthly].storage_class) == ("monthly", "GLACIER")
    assert head(monthly, "crm.dump")["ServerSideEncryption"] == "AES256"  # the copy kept SSE

    # `pgkeeper list --s3` says tier, class and readability from the manifests (and one HEAD).
    env = {**s3_env(s3_endpoint, s3_bucket, "tiers"), "BACKUP_DIR": str(tmp_path / "lister"),
           "RETENTION_TIERS": "on"}
    listed = run_cli("list", "--s3", env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(monthly))
    assert "monthly" in row and "GLACIER" in row and "no: needs a restore request" in row
    assert "STANDARD_IA" in next(line for line in listed.stdout.splitlines() if line.startswith(weekly))

    # Reading the archived monthly: refused until S3 restores it, then the restore request path.
    file = kept[monthly].files[0]
    with pytest.raises(RepositoryError, match="InvalidObjectState"):
        s3.open_plain(monthly, file).read()
    assert not s3.archive_state(monthly).readable
    state = make_readable(s3, monthly, "Expedited", wait=True, poll_seconds=0.1, wait_timeout_seconds=10)
    assert state.readable and state.ready_until is not None
    assert 'ongoing-request="false"' in head(monthly, "crm.dump")["Restore"]
    elsewhere = s3_repo(tmp_path, s3_endpoint, s3_bucket, "tiers").storage("local")
    copy_backup(s3, elsewhere, monthly)
    with elsewhere.open_plain(monthly, file) as f:
        assert f.read() == b"day 30" * 100

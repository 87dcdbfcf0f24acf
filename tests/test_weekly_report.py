"""The weekly report over a real repository: mailed through a real SMTP server (aiosmtpd) and
kept as the run's artifact, its figures those of the repository."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pgkeeper.blocks.notify import MailNotification
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups
from pgkeeper.fmt import human_bytes
from pgkeeper.names import new_backup_id
from pgkeeper.tasks.notify import DEFAULT_NOTIFICATION_BLOCK
from pgkeeper.tasks.retention import RetentionReport, record_retention
from tests.test_notify import mail_block
from tests.test_retention_flow import make_backup

NOW = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)  # a Monday morning, long before this run: no run of it failed


def test_the_weekly_report_is_mailed_and_is_an_artifact_with_the_repository_s_figures(
        tmp_path: Path, smtp_server) -> None:
    host, port, messages = smtp_server
    repo = BackupRepository(path=str(tmp_path / "repo"))
    for day in range(1, 15):  # two weeks of nightly crm backups, this week's twice the size
        at = NOW - timedelta(days=day) + timedelta(hours=1)
        make_backup(repo, new_backup_id(at), {"crm.dump": b"x" * (2000 if day <= 7 else 1000)},
                    verified=True if day == 2 else None)
    for day in range(8, 15):  # sales stopped being backed up a week ago
        make_backup(repo, new_backup_id(NOW - timedelta(days=day, hours=4)), {"sales.dump": b"s" * 500},
                    database="sales")
    storage = repo.storage()
    storage.write_record("restores", "r1.json", json.dumps(
        {"at": (NOW - timedelta(days=3)).isoformat(), "backup_id": "backup_x", "target": "crm_copy",
         "source": "local", "how": "terminal"}).encode())
    record_retention(storage, RetentionReport(source="local", location="l", dry_run=False, policy="p", kept=[],
                                              removed=["a", "b"], reasons={}, tiers={"a": "daily", "b": "daily"}),
                     NOW - timedelta(days=1))
    name = "weekly-" + uuid.uuid4().hex[:8]
    repo.save(name)
    mail_block(host, port, ["dba@example.com"]).save(DEFAULT_NOTIFICATION_BLOCK, overwrite=True)
    try:
        from pgkeeper.flows.weekly_report import weekly_report

        subject = weekly_report(repository_block=name, now=NOW)
    finally:
        MailNotification.delete(DEFAULT_NOTIFICATION_BLOCK)

    assert len(messages) == 1
    msg = messages[0]
    assert msg["Subject"] == f"[pgkeeper] {subject}"
    text = msg.get_content()
    crm = [m for m in list_backups(storage, "crm")]
    week = [m for m in crm if m.finished_at >= NOW - timedelta(days=7)]
    prev = [m for m in crm if m.finished_at < NOW - timedelta(days=7)]
    assert len(week) == 7 and len(prev) == 7
    assert (f"crm (logical): 7 backup(s), {human_bytes(sum(m.size for m in week))} (previous week 7, "
            f"{human_bytes(sum(m.size for m in prev))}; mean size +100%)") in text
    assert "duration mean 5.0 s max 5.0 s" in text
    # Attention first: the size jump, the database that stopped.
    attention = text.split("Backups of the week")[0]
    assert "logical backups of crm are +100% in size against the previous week" in attention
    assert "no logical backup of sales this week" in attention
    verified = next(m for m in crm if m.status == "verified")
    assert f"{verified.backup_id} restore: PASS, RTO 1.0 s" in text
    assert "backup_x -> crm_copy (local, confirmed by terminal)" in text
    assert "removed 2 daily (local)" in text
    total = sum(m.size for m in list_backups(storage))
    assert f"local - LOCAL: {human_bytes(total)}, $0.00/month" in text
    assert "7 backup(s), 2 item(s) need attention" in subject and "weekly report 2025-05-26 to 2025-06-02" in subject

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["weekly-report"])), limit=1)
    assert "## Needs attention" in artifact.data and "no logical backup of sales this week" in artifact.data

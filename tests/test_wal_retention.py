"""WAL retention: nothing a kept base backup needs is removed, history files never are."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pgkeeper.manifest import Manifest
from pgkeeper.wal.config import S3Target
from pgkeeper.wal.retention import expire_wal
from pgkeeper.wal.s3 import S3WalStore
from pgkeeper.wal.spool import LocalWalStore
from tests.test_wal_ship import offsite_repo

NAMES = ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005",
         "000000010000000000000004.00000028.backup", "00000002.history", "000000020000000000000004",
         "000000020000000000000005", "000000020000000000000006", "000000010000000100000000"]


def physical(start_lsn: str, timeline: int = 2) -> Manifest:
    now = datetime.now(UTC)
    return Manifest(backup_id="backup_20240101_000000", kind="physical", database="postgres", server_version="15",
                    tool_version="t", started_at=now, finished_at=now, start_lsn=start_lsn, stop_lsn=start_lsn,
                    timeline=timeline, wal_segment_size=16 << 20, compression="zstd", size=0, files=[])


def test_expire_wal_keeps_what_kept_base_backups_need(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    repo = offsite_repo(tmp_path / "repo", s3_endpoint, s3_bucket)
    spool = LocalWalStore(tmp_path / "repo" / "wal")
    remote = S3WalStore(S3Target(bucket=s3_bucket, prefix="site-a", endpoint_url=s3_endpoint, region="us-east-1"))
    for name in NAMES:
        _, obj = spool.put(name, name.encode() * 100)
        remote.put_file(obj.key, str(obj.path), obj.sha256)

    nothing = expire_wal(repo, [])
    assert nothing.keep_from is None and sorted(o.name for o in spool.objects()) == sorted(NAMES)

    preview = expire_wal(repo, [physical("0/5000028"), physical("1/00000028", 1)], dry_run=True)
    assert sorted(o.name for o in spool.objects()) == sorted(NAMES)

    done = expire_wal(repo, [physical("0/5000028"), physical("1/00000028", 1)])
    expected_gone = {"000000010000000000000003", "000000010000000000000004", "000000020000000000000004",
                     "000000010000000000000004.00000028.backup"}
    assert set(done.removed_local) == set(done.removed_s3) == set(preview.removed_local) == expected_gone
    assert done.keep_from == "000000020000000000000005"
    left = sorted(set(NAMES) - expected_gone)
    assert sorted(o.name for o in spool.objects()) == left
    assert sorted(name for name, _, _ in remote.objects()) == left

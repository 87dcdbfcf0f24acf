"""wal-ship: the spool moves to S3, a machine with only the bucket recovers, a failing archive
fails the run naming the segment PostgreSQL could not archive."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.localcluster import LocalCluster, free_port, scratch_dir
from pgkeeper.wal.testing import ArchivingCluster, archiving_cluster
from tests.conftest import PASSWORD
from tests.test_pitr import commit_rows, save_blocks, wait_archived


def offsite_repo(path: Path, endpoint: str, bucket: str) -> BackupRepository:
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    creds = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                           aws_client_parameters=AwsClientParameters(endpoint_url=endpoint))
    return BackupRepository(path=str(path), offsite=S3Bucket(bucket_name=bucket, bucket_folder="site-a",
                                                             credentials=creds), s3_part_size_mb=5)


@pytest.fixture
def arch() -> Iterator[ArchivingCluster]:
    with archiving_cluster(PASSWORD, archive_timeout="1s") as a:
        yield a


@pytest.fixture
def new_machine() -> Iterator[Path]:
    base = scratch_dir("pgkeeper-newmachine-")
    try:
        yield base
    finally:
        LocalCluster(base / "pgdata").stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_recovery_on_a_new_machine_from_the_bucket_alone(arch: ArchivingCluster, s3_endpoint: str, s3_bucket: str,
                                                         new_machine: Path) -> None:
    from pgkeeper.flows.base_backup import base_backup
    from pgkeeper.flows.pitr import pitr
    from pgkeeper.flows.wal_ship import wal_ship

    repo = offsite_repo(arch.repo_path, s3_endpoint, s3_bucket)
    db, repo_block = save_blocks(arch.cluster, repo)
    base_backup(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path), verify=False)
    commit_rows(arch.cluster, 10, switch_every=3)
    wait_archived(arch.cluster)

    status = wal_ship(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path),
                      keep_local_seconds=0)
    assert status.failed_count == 0 and status.last_archived_wal
    spool = arch.repo_path / "wal"
    assert list(spool.rglob("*.zst")) == []  # all of it is in the bucket now
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
            .list_objects_v2(Bucket=s3_bucket, Prefix="site-a/wal/")["Contents"]]
    assert any(k.endswith(".zst") and status.last_archived_wal[:24] in k for k in keys)

    # The new machine: an empty repository directory, the same bucket.
    fresh = offsite_repo(new_machine / "repo", s3_endpoint, s3_bucket)
    _, fresh_block = save_blocks(arch.cluster, fresh)
    port = free_port()
    result = pitr(data_dir=str(new_machine / "pgdata"), port=port, latest=True, repository_block=fresh_block)
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres password={PASSWORD}") as c:
        assert [r[0] for r in c.execute("SELECT id FROM events ORDER BY id")] == list(range(1, 11))
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    assert result.timeline == 2
    assert not (new_machine / "repo" / "wal").exists() or not list((new_machine / "repo" / "wal").rglob("*.zst"))


def test_a_failing_archive_fails_wal_ship_naming_the_segment(arch: ArchivingCluster) -> None:
    from pgkeeper.flows.wal_ship import wal_ship

    repo = BackupRepository(path=str(arch.repo_path))
    db, repo_block = save_blocks(arch.cluster, repo)
    spool = arch.repo_path / "wal"
    os.chown(spool, 0, 0)  # the postgres user can no longer write the spool
    spool.chmod(0o700)
    with psycopg.connect(arch.cluster.conninfo(), autocommit=True) as c:
        c.execute("CREATE TABLE t (id int)")
        c.execute("INSERT INTO t VALUES (1)")
        failed_seg = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        c.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while c.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0] == 0:
            assert time.monotonic() < deadline, "archiving never failed"
            time.sleep(0.2)
        last_failed = c.execute("SELECT last_failed_wal FROM pg_stat_archiver").fetchone()[0]
    assert last_failed <= failed_seg
    state = wal_ship(connection_block=db, repository_block=repo_block, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=f"could not archive {last_failed}"):
        state.result()

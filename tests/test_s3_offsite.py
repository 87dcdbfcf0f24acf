"""Offsite copies in a real (moto) S3 server over HTTP: up, listed, restored, proven, cleaned."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest

from pgkeeper import pgtools
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups, resolve_backup
from pgkeeper.config import repository_from_env
from pgkeeper.errors import IntegrityError
from pgkeeper.names import new_backup_id
from pgkeeper.workfile import materialize_dump
from tests.helpers import ROOT, create_database, drop_database, run_cli, run_cli_here, table_fingerprints
from tests.s3_faults import FaultyProxy
from tests.test_retention_flow import make_backup, s3_env


def s3_repo(tmp_path: Path, endpoint: str, bucket: str, prefix: str = "offsite", **fields) -> BackupRepository:
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    creds = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                           aws_client_parameters=AwsClientParameters(endpoint_url=endpoint))
    return BackupRepository(path=str(tmp_path / f"repo-{uuid.uuid4().hex[:6]}"),
                            offsite=S3Bucket(bucket_name=bucket, bucket_folder=prefix, credentials=creds),
                            s3_part_size_mb=5, **fields)


def direct(endpoint: str):
    """A plain boto3 client straight to moto: what an operator would inspect the bucket with."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def object_sha256(endpoint: str, bucket: str, key: str) -> str:
    return hashlib.sha256(direct(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    pages = direct(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def plain_restore(pg, archive: Path, into: str) -> str:
    create_database(pg, into)
    subprocess.run([pgtools.tool("pg_restore"), "--no-owner", "--exit-on-error", "-d", into, str(archive)],
                   env={**pg.libpq_env(into)}, check=True, capture_output=True)
    return pg.conninfo(into)


def test_backup_goes_up_is_listed_from_the_bucket_alone_and_restores(pg, crm_db, pg_env, s3_endpoint, s3_bucket,
                                                                     tmp_path):
    env = {**pg_env, **s3_env(s3_endpoint, s3_bucket, "nightly/crm")}
    result = run_cli_here("backup", env=env)
    assert result.returncode == 0, result.stderr
    backup_id = result.stdout.split()[1]
    assert (f"uploaded to s3://{s3_bucket}/nightly/crm/backups/{backup_id}/, checksum verified; "
            "retention: kept 1, removed 0 (local), kept 1, removed 0 (s3)") in result.stdout

    stored = keys(s3_endpoint, s3_bucket, "nightly/crm/")
    assert stored == [f"nightly/crm/backups/{backup_id}/{crm_db}.dump.zst",
                      f"nightly/crm/backups/{backup_id}/globals.json.zst",
                      f"nightly/crm/backups/{backup_id}/manifest.json"]
    for key in stored:  # server-side encryption on every object
        assert direct(s3_endpoint).head_object(Bucket=s3_bucket, Key=key)["ServerSideEncryption"] == "AES256"

    # A new machine: only the bucket settings, an empty local directory, no blocks.
    new_machine = {**s3_env(s3_endpoint, s3_bucket, "nightly/crm"), "BACKUP_DIR": str(tmp_path / "new-machine")}
    listed = run_cli("list", "--s3", env=new_machine)
    assert listed.returncode == 0, listed.stderr
    assert backup_id in listed.stdout and crm_db in listed.stdout
    assert f"1 backup(s) in s3://{s3_bucket}/nightly/crm" in listed.stdout
    local = run_cli("list", env=new_machine)
    assert "no backups in" in local.stdout

    # Restore from the bucket alone: stream with checksum, then plain pg_restore.
    storage = repository_from_env(new_machine).storage("s3")
    m = resolve_backup(storage, "latest", crm_db)
    assert m.backup_id == backup_id
    file = m.files[0]
    archive = materialize_dump(storage.open_plain(m.backup_id, file), file, m.compression,
                               tmp_path / "from-bucket.dump", storage.url(m.backup_id, file.name))
    restored = "from_s3_" + uuid.uuid4().hex[:6]
    try:
        plain_restore(pg, archive, restored)
        assert table_fingerprints(pg.conninfo(restored)) == table_fingerprints(pg.conninfo(crm_db))
    finally:
        drop_database(pg, restored)
    assert not (tmp_path / "new-machine").exists()


def test_backup_lands_intact_through_a_flaky_network(pg, crm_db, conn, s3_endpoint, s3_bucket, tmp_path):
    from pgkeeper.flows.backup import backup
    from pgkeeper.tasks.offsite import fetch_backup

    # Enough hard-to-compress data that the dump is uploaded in several 5 MB parts.
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute("CREATE TABLE noise AS SELECT g AS id, md5(random()::text) || md5(random()::text) || "
                  "md5(random()::text) || md5(random()::text) AS junk FROM generate_series(1, 160000) g")
    suffix = uuid.uuid4().hex[:8]
    conn.save(f"db-{suffix}")
    with FaultyProxy(s3_endpoint, failure_rate=0.3, max_faults=40, seed=7) as proxy:
        repo = s3_repo(tmp_path, proxy.url, s3_bucket, "flaky", s3_checksum="SHA256")  # the other algorithm
        repo.save(f"repo-{suffix}")
        state = backup(connection_block=f"db-{suffix}", repository_block=f"repo-{suffix}", return_state=True)
        manifest = state.result()
        upload_faults = sum(proxy.faults.values())
    assert upload_faults > 0, f"the proxy should have failed some of its {proxy.requests} requests"
    assert any(line.endswith("checksum verified") for line in state.message.split("; "))
    file = manifest.files[0]
    assert file.size > 10 * 1024 * 1024  # really multipart
    prefix = f"flaky/backups/{manifest.backup_id}/"
    assert object_sha256(s3_endpoint, s3_bucket, prefix + file.name) == file.sha256
    local_manifest = (Path(repo.path) / "backups" / manifest.backup_id / "manifest.json").read_bytes()
    assert direct(s3_endpoint).get_object(Bucket=s3_bucket, Key=prefix + "manifest.json")["Body"].read() \
        == local_manifest
    assert direct(s3_endpoint).list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []

    # Downloads through a flaky network (bodies cut off half-way) resume and still check out.
    with FaultyProxy(s3_endpoint, failure_rate=1.0, max_faults=4, seed=11, only=file.name) as proxy:
        elsewhere = s3_repo(tmp_path, proxy.url, s3_bucket, "flaky")
        fetch_backup(elsewhere, manifest.backup_id)
        assert proxy.faults["truncate"] > 0, proxy.faults  # a body cut off half-way was resumed
    fetched = Path(elsewhere.path) / "backups" / manifest.backup_id / file.name
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == file.sha256
    assert [m.backup_id for m in list_backups(elsewhere.local())] == [manifest.backup_id]


UPLOAD_SCRIPT = """
import sys
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.tasks.offsite import upload_backup
upload_backup(BackupRepository.load(sys.argv[1]), sys.argv[2])
"""


def test_killed_upload_leaves_nothing_listed_and_the_next_run_collects_the_debris(s3_endpoint, s3_bucket,
                                                                                 tmp_path):
    from pgkeeper.flows.retention import retention

    client = direct(s3_endpoint)
    with FaultyProxy(s3_endpoint, failure_rate=0.0, delay=0.25) as slow:  # a slow link, so we can cut it
        repo = s3_repo(tmp_path, slow.url, s3_bucket, "killed", s3_max_concurrency=1)
        backup_id = new_backup_id()
        make_backup(repo, backup_id, {"a.dump": os.urandom(1024 * 1024), "b.dump": os.urandom(40 * 1024 * 1024)})
        name = "killed-" + uuid.uuid4().hex[:8]
        repo.save(name)
        proc = subprocess.Popen([sys.executable, "-c", UPLOAD_SCRIPT, name, backup_id], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                uploads = client.list_multipart_uploads(Bucket=s3_bucket, Prefix="killed/").get("Uploads", [])
                if uploads and len(client.list_parts(Bucket=s3_bucket, Key=uploads[0]["Key"],
                                                     UploadId=uploads[0]["UploadId"]).get("Parts", [])) >= 2:
                    break
                time.sleep(0.1)
            assert proc.poll() is None, "the upload finished before it could be interrupted"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

    # Nothing is listed: the manifest never went up. The debris is there.
    s3 = s3_repo(tmp_path, s3_endpoint, s3_bucket, "killed").storage("s3")
    assert s3.list_backup_ids() == []
    listed = run_cli("list", "--s3", env={**s3_env(s3_endpoint, s3_bucket, "killed"),
                                          "BACKUP_DIR": str(tmp_path / "elsewhere")})
    assert "no backups in s3://" in listed.stdout, listed.stdout + listed.stderr
    assert keys(s3_endpoint, s3_bucket, "killed/") == [f"killed/backups/{backup_id}/a.dump"]
    assert len(client.list_multipart_uploads(Bucket=s3_bucket, Prefix="killed/").get("Uploads", [])) == 1

    # The next run: retention changes nothing, garbage collection removes every piece of debris.
    direct_repo = s3_repo(tmp_path, s3_endpoint, s3_bucket, "killed")
    direct_repo.path = repo.path  # the same machine, now with a good link
    direct_repo.save(name, overwrite=True)
    [report] = retention(repository_block=name, sources=["s3"], gc_safety_hours=0)
    assert report.removed == []
    assert keys(s3_endpoint, s3_bucket, "killed/") == []
    assert client.list_multipart_uploads(Bucket=s3_bucket, Prefix="killed/").get("Uploads", []) == []

    # Uploading again works, and once it is up a repeated upload changes nothing.
    from pgkeeper.tasks.offsite import upload_backup

    upload_backup(direct_repo, backup_id)
    assert s3.list_backup_ids() == [backup_id]
    assert upload_backup(direct_repo, backup_id).checks == ["already uploaded, manifest identical"]


def test_a_corrupted_object_is_refused_on_download_naming_the_object(s3_endpoint, s3_bucket, tmp_path):
    import zstandard

    from pgkeeper.tasks.offsite import fetch_backup, upload_backup

    repo = s3_repo(tmp_path, s3_endpoint, s3_bucket, "corrupt", s3_encryption="aws:kms",
                   s3_kms_key_id="alias/pgkeeper", s3_storage_class="STANDARD_IA")
    backup_id = new_backup_id()
    payload = zstandard.ZstdCompressor(level=1).compress(os.urandom(200_000) + b"x" * 200_000)
    make_backup(repo, backup_id, {"crm.dump.zst": payload}, compression="zstd")
    upload_backup(repo, backup_id)

    key = f"corrupt/backups/{backup_id}/crm.dump.zst"
    client = direct(s3_endpoint)
    head = client.head_object(Bucket=s3_bucket, Key=key)
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"], head["StorageClass"]) == \
        ("aws:kms", "alias/pgkeeper", "STANDARD_IA")
    data = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    data[len(data) // 3] ^= 0x01  # one byte changed, e.g. by a disk that lies
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data))
    url = f"s3://{s3_bucket}/{key}"

    new_machine = s3_repo(tmp_path, s3_endpoint, s3_bucket, "corrupt")
    with pytest.raises(IntegrityError, match=url):
        fetch_backup(new_machine, backup_id)
    assert list_backups(new_machine.local()) == []
    assert not (Path(new_machine.path) / "backups" / backup_id).exists()

    storage = new_machine.storage("s3")
    m = resolve_backup(storage, backup_id)
    dest = tmp_path / "work.dump"
    with pytest.raises(IntegrityError, match=url):
        materialize_dump(storage.open_plain(backup_id, m.files[0]), m.files[0], "zstd", dest,
                         storage.url(backup_id, m.files[0].name))
    assert not dest.exists()


def test_a_missing_bucket_is_one_plain_line_without_secrets(s3_endpoint, tmp_path):
    env = {**s3_env(s3_endpoint, "no-such-bucket-here", "x"), "BACKUP_DIR": str(tmp_path / "r"),
           "AWS_SECRET_ACCESS_KEY": "s3cr3t-" + uuid.uuid4().hex}
    result = run_cli("list", "--s3", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == "pgkeeper: error: listing s3://no-such-bucket-here/x/backups/ failed: NoSuchBucket"
    assert env["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr


def test_the_next_backup_uploads_older_backups_that_never_got_offsite(pg, crm_db, pg_env, s3_endpoint, s3_bucket):
    prefix = "late-" + uuid.uuid4().hex[:6]
    with_s3 = {**pg_env, **s3_env(s3_endpoint, s3_bucket, prefix)}
    # Made before uploads were switched on.
    first = run_cli_here("backup", env=pg_env)
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.split()[1]
    # Uploaded, but its manifest never reached the bucket (the run was killed just before).
    second = run_cli_here("backup", env=with_s3)
    assert second.returncode == 0, second.stderr
    second_id = second.stdout.split()[1]
    assert f"uploaded 1 older backup(s) that were not offsite: {first_id}" in second.stdout
    direct(s3_endpoint).delete_object(Bucket=s3_bucket, Key=f"{prefix}/backups/{second_id}/manifest.json")
    # Made before uploads were on, and damaged on local disk since: it cannot go up as it is.
    third = run_cli_here("backup", env=pg_env)
    assert third.returncode == 0, third.stderr
    third_id = third.stdout.split()[1]
    dump = Path(pg_env["BACKUP_DIR"]) / "backups" / third_id / f"{crm_db}.dump.zst"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    fourth = run_cli_here("backup", env=with_s3)
    assert fourth.returncode == 0, fourth.stderr
    fourth_id = fourth.stdout.split()[1]
    assert f"uploaded 1 older backup(s) that were not offsite: {second_id}" in fourth.stdout
    assert f"backup {third_id} has no offsite copy" in fourth.stdout + fourth.stderr
    s3 = repository_from_env(with_s3).storage("s3")
    assert [m.backup_id for m in list_backups(s3)] == [first_id, second_id, fourth_id]
    for m in list_backups(s3):
        for file in m.files:
            assert object_sha256(s3_endpoint, s3_bucket, f"{prefix}/backups/{m.backup_id}/{file.name}") == file.sha256

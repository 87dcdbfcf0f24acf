"""Client-side encryption and signed manifests, against real PostgreSQL, moto over HTTP and the
age command line: a stolen bucket reads nothing, a tampered one is refused, rotation loses nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pgkeeper import keys, sealing
from pgkeeper.config import repository_from_env
from pgkeeper.errors import IntegrityError
from pgkeeper.manifest import Manifest
from tests.helpers import run_cli, run_cli_here, wal_page_header
from tests.test_retention_flow import s3_env
from tests.test_s3_offsite import direct

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def writer_keys(tmp_path: Path, name: str = "writer") -> dict[str, str]:
    """A key directory as a writing host has it: the public key and the manifest key, no private key."""
    home = tmp_path / name
    home.mkdir(mode=0o700)
    for f in (keys.RECIPIENTS, keys.MANIFEST_KEY):
        shutil.copy(keys.keys_dir() / f, home / f)
    return {"PGKEEPER_KEYS_DIR": str(home)}


def test_backups_are_encrypted_before_they_leave_and_age_decrypts_them_by_hand(
        pg, crm_db, pg_env, s3_endpoint, s3_bucket, tmp_path, backup_key):
    env = {**pg_env, **s3_env(s3_endpoint, s3_bucket, "sealed"), **writer_keys(tmp_path)}
    result = run_cli_here("backup", env=env)
    assert result.returncode == 0, result.stderr
    backup_id = result.stdout.split()[1]
    assert "AGE-SECRET-KEY" not in (Path(env["PGKEEPER_KEYS_DIR"]) / keys.RECIPIENTS).read_text()

    m = Manifest.from_bytes((Path(pg_env["BACKUP_DIR"]) / "backups" / backup_id / "manifest.json").read_bytes())
    assert m.encryption == "age"
    assert all(f.encryption == "age" and f.key_fingerprints == [sealing.fingerprint(backup_key)] for f in m.files)
    # Neither the local copy nor the object in the bucket is readable without the key.
    local_dump = Path(pg_env["BACKUP_DIR"]) / "backups" / backup_id / m.dump_file.name
    body = direct(s3_endpoint).get_object(Bucket=s3_bucket, Key=f"sealed/backups/{backup_id}/{m.dump_file.name}")
    stored = body["Body"].read()
    assert stored.startswith(b"age-encryption.org/v1\n") and local_dump.read_bytes().startswith(b"age-")
    assert ZSTD_MAGIC not in stored[:4096] and crm_db.encode() not in stored

    # A user without pgkeeper: Debian's age with the key copy, then zstd, gives pg_dump's archive.
    if shutil.which("age") is None:
        pytest.skip("the age command line is not installed (Debian package age; .ci/run installs it)")
    encrypted = tmp_path / "from-bucket.zst.age"
    encrypted.write_bytes(stored)
    plain = subprocess.run(["age", "-d", "-i", str(keys.keys_dir() / keys.IDENTITIES), str(encrypted)],
                           capture_output=True, check=True).stdout
    import zstandard

    archive = zstandard.ZstdDecompressor().stream_reader(plain).read(5)
    assert archive == b"PGDMP"

    # The restoring side (this process holds the private key) reads it from the bucket alone.
    repo = repository_from_env({**env, "BACKUP_DIR": str(tmp_path / "elsewhere")})
    with repo.storage("s3").open_plain(backup_id, m.dump_file) as f:
        assert zstandard.ZstdDecompressor().stream_reader(f).read(5) == b"PGDMP"


def test_a_tampered_or_unsigned_manifest_is_refused_naming_it(pg, crm_db, pg_env, s3_endpoint, s3_bucket, tmp_path):
    env = {**pg_env, **s3_env(s3_endpoint, s3_bucket, "tampered")}
    result = run_cli_here("backup", env=env)
    assert result.returncode == 0, result.stderr
    backup_id = result.stdout.split()[1]
    client = direct(s3_endpoint)
    prefix = f"tampered/backups/{backup_id}/"
    manifest_key = prefix + "manifest.json"
    doc = json.loads(client.get_object(Bucket=s3_bucket, Key=manifest_key)["Body"].read())
    assert doc["authentication"]["alg"] == "hmac-sha256"

    # An attacker with write access to the bucket: a different dump, and its sha256 in the manifest.
    dump_name = f"{crm_db}.dump.zst"
    forged = sealing.encrypt_bytes(b"\x28\xb5\x2f\xfd" + b"DROP TABLE customers;", keys.recipients())
    client.put_object(Bucket=s3_bucket, Key=prefix + dump_name, Body=forged)
    import hashlib

    for f in doc["files"]:
        if f["name"] == dump_name:
            f["sha256"], f["size"] = hashlib.sha256(forged).hexdigest(), len(forged)
    client.put_object(Bucket=s3_bucket, Key=manifest_key, Body=json.dumps(doc).encode())
    elsewhere = {**env, "BACKUP_DIR": str(tmp_path / "elsewhere")}
    restore = run_cli_here("restore", backup_id, "--from-s3", "--into", f"{crm_db}_copy", "--yes", env=elsewhere)
    assert restore.returncode == 5, restore.stdout + restore.stderr
    [line] = [ln for ln in restore.stderr.splitlines() if ln.strip()]
    assert "manifest.json was changed after it was signed" in line and backup_id in line

    # Unsigned: the attacker drops the authentication entirely.
    doc.pop("authentication")
    client.put_object(Bucket=s3_bucket, Key=manifest_key, Body=json.dumps(doc).encode())
    storage = repository_from_env(elsewhere).storage("s3")
    with pytest.raises(IntegrityError, match="is not signed"):
        storage.read_manifest(backup_id)


def test_rotation_keeps_old_backups_readable_and_new_ones_use_the_new_key(pg, crm_db, pg_env, s3_endpoint,
                                                                          s3_bucket, tmp_path, monkeypatch):
    keydir = tmp_path / "rotating"
    shutil.copytree(keys.keys_dir(), keydir)
    monkeypatch.setenv("PGKEEPER_KEYS_DIR", str(keydir))
    env = {**pg_env, **s3_env(s3_endpoint, s3_bucket, "rotated"), "PGKEEPER_KEYS_DIR": str(keydir)}
    first = run_cli_here("backup", env=env)
    assert first.returncode == 0, first.stderr
    rotated = run_cli_here("key", "rotate", "--copy-to", str(tmp_path / "new-key.txt"), env=env)
    assert rotated.returncode == 0 and "move" in rotated.stdout, rotated.stderr
    assert (tmp_path / "new-key.txt").stat().st_mode & 0o777 == 0o600
    second = run_cli_here("backup", env=env)
    assert second.returncode == 0, second.stderr

    repo = repository_from_env(env)
    storage = repo.storage("s3")
    old, new = (Manifest.from_bytes(storage.read_manifest(r.stdout.split()[1])) for r in (first, second))
    assert old.dump_file.key_fingerprints != new.dump_file.key_fingerprints
    assert new.dump_file.key_fingerprints == [sealing.fingerprint(keys.recipients(keydir)[0])]
    import zstandard

    for m in (old, new):  # both open with the key directory's identities
        with storage.open_plain(m.backup_id, m.dump_file) as f:
            assert zstandard.ZstdDecompressor().stream_reader(f).read(5) == b"PGDMP"
    # A machine that has only the new key cannot open the old backup, and says why.
    only_new = tmp_path / "only-new"
    only_new.mkdir()
    shutil.copy(keydir / keys.MANIFEST_KEY, only_new)
    (only_new / keys.IDENTITIES).write_text(keys.identities(keydir)[-1] + "\n")
    monkeypatch.setenv("PGKEEPER_KEYS_DIR", str(only_new))
    with pytest.raises(sealing.KeyMissing, match="none of the configured keys can decrypt it"), \
            repository_from_env(env).storage("s3").open_plain(old.backup_id, old.dump_file) as f:
        f.read()


def test_wal_is_encrypted_on_push_and_read_back_with_the_identity_only(tmp_path, backup_key):
    from pgkeeper.wal import config as walconfig

    name = "000000010000000000000001"
    segment = tmp_path / name
    segment.write_bytes(wal_page_header(name) + b"\0" * (16 * 1024 * 1024 - 40))
    spool = tmp_path / "spool"
    cfg = walconfig.WalConfig(spool=str(spool), recipients=[backup_key])
    cfg_path = walconfig.write(tmp_path / "wal.json", cfg)
    push = run_cli("wal-push", "--config", str(cfg_path), str(segment), env=writer_keys(tmp_path))
    assert push.returncode == 0, push.stderr
    [stored] = list(spool.rglob(f"{name}-*"))
    assert stored.read_bytes().startswith(b"age-encryption.org/v1\n")

    out = tmp_path / "restored"
    denied = run_cli("wal-fetch", "--config", str(cfg_path), name, str(out),
                     env={"PGKEEPER_AGE_IDENTITY_FILE": str(tmp_path / "absent.txt")})
    assert denied.returncode == 255 and "no decryption key is configured" in denied.stderr, denied.stderr
    assert not out.exists()
    fetched = run_cli("wal-fetch", "--config", str(cfg_path), name, str(out),
                      env={"PGKEEPER_AGE_IDENTITY_FILE": str(keys.keys_dir() / keys.IDENTITIES)})
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_bytes() == segment.read_bytes()


SENTINEL_SECRET = "sentinel-aws-secret-" + "7f3c9e1d"


def test_encrypted_pitr_from_the_bucket_alone_leaves_no_secret_in_the_data_directory(
        s3_endpoint, s3_bucket, tmp_path, backup_key, monkeypatch):
    """Base backup and WAL encrypted on the database host (public key only), shipped to S3, and a
    point-in-time recovery on a machine that has only the bucket and the private key."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters
    from pydantic import SecretStr

    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.flows.base_backup import base_backup
    from pgkeeper.flows.pitr import pitr
    from pgkeeper.flows.wal_ship import wal_ship
    from pgkeeper.localcluster import LocalCluster, free_port, scratch_dir
    from pgkeeper.wal.testing import archiving_cluster
    from tests.conftest import PASSWORD
    from tests.test_pitr import commit_rows, recovered_ids, save_blocks, wait_archived

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL_SECRET)  # moto takes any key; this one is findable
    creds = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key=SecretStr(SENTINEL_SECRET),
                           region_name="us-east-1", aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint))
    bucket = S3Bucket(bucket_name=s3_bucket, bucket_folder="pitr", credentials=creds)
    with archiving_cluster(PASSWORD, cfg=None, prefix="pgkeeper-sealed-") as arch:
        repo = BackupRepository(path=str(arch.repo_path), offsite=bucket, s3_part_size_mb=5)
        db, repo_block = save_blocks(arch.cluster, repo)
        commit_rows(arch.cluster, 2)
        base_backup(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path), verify=False)
        server_cfg = arch.config_path.read_text()
        assert SENTINEL_SECRET not in server_cfg and "AGE-SECRET-KEY" not in server_cfg
        assert backup_key in server_cfg  # the database host encrypts WAL to the public key
        commit_rows(arch.cluster, 6, start=3)
        wait_archived(arch.cluster)
        wal_ship(connection_block=db, repository_block=repo_block, wal_config=str(arch.config_path),
                 keep_local_seconds=0)
        shipped = direct(s3_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="pitr/wal/0")["Contents"]
        sample = direct(s3_endpoint).get_object(Bucket=s3_bucket, Key=shipped[-1]["Key"])["Body"].read()
        assert sample.startswith(b"age-encryption.org/v1\n")

        # A new machine: an empty local directory, the bucket, the key directory (private key).
        port = free_port()
        base = scratch_dir("pgkeeper-sealed-recovered-")  # reachable by the server's OS user
        into = base / "data"
        elsewhere = BackupRepository(path=str(base / "new-machine"), offsite=bucket, s3_part_size_mb=5)
        elsewhere.save(repo_block + "-new", overwrite=True)
        try:
            pitr(data_dir=str(into), port=port, latest=True, repository_block=repo_block + "-new", source="s3")
            ids, in_recovery = recovered_ids(port)
            assert ids == list(range(1, 9)) and not in_recovery
            private = keys.identities()[0]
            for path in [p for p in base.rglob("*") if p.is_file()]:
                data = path.read_bytes()
                assert SENTINEL_SECRET.encode() not in data, path
                assert private.encode() not in data and b"AGE-SECRET-KEY" not in data, path
        finally:
            LocalCluster(into).stop("immediate")
            shutil.rmtree(base, ignore_errors=True)


def test_wal_objects_honour_the_repository_kms_key_and_storage_class(s3_endpoint, s3_bucket, tmp_path):
    """One S3 core: WAL gets the same server-side encryption and storage class as the backups."""
    from pgkeeper.settings import S3Target
    from pgkeeper.wal.s3 import S3WalStore

    target = S3Target(bucket=s3_bucket, prefix="kms", endpoint_url=s3_endpoint, region="us-east-1",
                      sse="aws:kms", kms_key_id="alias/pgkeeper", storage_class="STANDARD_IA")
    segment = tmp_path / "seg"
    segment.write_bytes(b"x" * 1000)
    import hashlib

    S3WalStore(target).put_file("0000000100000000/000000010000000000000001-abc.zst", str(segment),
                                hashlib.sha256(b"x" * 1000).hexdigest())
    head = direct(s3_endpoint).head_object(Bucket=s3_bucket,
                                           Key="kms/wal/0000000100000000/000000010000000000000001-abc.zst")
    assert head["ServerSideEncryption"] == "aws:kms" and head["StorageClass"] == "STANDARD_IA"
    assert head["SSEKMSKeyId"].endswith("alias/pgkeeper")

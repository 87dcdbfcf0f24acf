"""The storage interface: every driver keeps the same promises, and the logic above it (catalog,
retention, garbage collection, offsite copy) runs on the in-memory driver in milliseconds."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pgkeeper.catalog import list_backups, resolve_backup
from pgkeeper.errors import IntegrityError, NotFound, RepositoryError
from pgkeeper.manifest import Manifest, StoredFile
from pgkeeper.names import new_backup_id
from pgkeeper.retention import RetentionPolicy, plan, to_remove
from pgkeeper.storage.interface import Storage
from pgkeeper.storage.local import LocalStorage
from pgkeeper.storage.memory import MemoryStorage
from pgkeeper.tasks.offsite import collect_storage_garbage, copy_backup
from pgkeeper.tasks.retention import backup_records


def make_backup(storage: Storage, backup_id: str, database: str = "crm", payload: bytes = b"dump bytes") -> Manifest:
    storage.begin_backup(backup_id)
    with storage.write_file(backup_id, f"{database}.dump.zst") as out:
        out.write(payload)
    file = StoredFile(name=f"{database}.dump.zst", size=out.size, sha256=out.sha256)
    at = datetime.strptime(backup_id, "backup_%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    m = Manifest(backup_id=backup_id, kind="logical", database=database, server_version="15", tool_version="t",
                 started_at=at, finished_at=at, compression="zstd", size=file.size, files=[file],
                 tables={f"public.table_{i}": i for i in range(40)})  # a manifest of a few KB, as in life
    storage.finish_backup(backup_id, m.to_bytes())
    return m


@pytest.fixture(params=["memory", "local"])
def storage(request, tmp_path: Path) -> Storage:
    return MemoryStorage() if request.param == "memory" else LocalStorage(tmp_path / "repo")


def test_every_driver_keeps_the_interface(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    storage.ensure_writable()
    first = make_backup(storage, "backup_20261101_020000")
    storage.begin_backup("backup_20261102_020000")  # claimed, never finished
    with pytest.raises(RepositoryError):
        storage.begin_backup("backup_20261101_020000")
    assert storage.list_backup_ids() == [first.backup_id]
    assert storage.claimed_ids() == [first.backup_id, "backup_20261102_020000"]
    [file] = first.files
    assert file.sha256 == hashlib.sha256(b"dump bytes").hexdigest() and file.size == 10
    with storage.open_file(first.backup_id, file.name) as f:
        assert f.read() == b"dump bytes"
    assert storage.stat_file(first.backup_id, file.name) == 10
    with pytest.raises(NotFound):
        storage.open_file(first.backup_id, "absent.zst")
    with pytest.raises(RepositoryError):
        storage.open_file(first.backup_id, "../escape")
    assert storage.incomplete_backups(stale_after_s=0) == ["backup_20261102_020000"]
    with storage.scratch("test") as scratch:
        (scratch / "x").write_bytes(b"1")
        assert scratch.is_dir()
    assert not scratch.exists()
    storage.delete_backup(first.backup_id)
    assert storage.list_backup_ids() == []
    storage.write_record("restores", "2.json", b"second")
    storage.write_record("restores", "1.json", b"first")
    assert storage.read_records("restores") == [b"first", b"second"]
    with pytest.raises(RepositoryError):
        storage.write_record("backups", "x.json", b"")


def test_a_write_that_fails_stores_nothing(storage: Storage) -> None:
    storage.begin_backup("backup_20261101_020000")
    with pytest.raises(RuntimeError), storage.write_file("backup_20261101_020000", "crm.dump.zst") as out:
        out.write(b"half")
        raise RuntimeError("pg_dump died")
    with pytest.raises(NotFound):
        storage.open_file("backup_20261101_020000", "crm.dump.zst")


def test_catalog_and_retention_run_on_the_memory_driver() -> None:
    storage = MemoryStorage()
    start = datetime(2026, 1, 1, 2, tzinfo=UTC)
    ids = [new_backup_id(start + timedelta(days=d)) for d in range(120)]
    for backup_id in ids:
        make_backup(storage, backup_id)
    assert resolve_backup(storage, "latest", "crm").backup_id == ids[-1]
    with pytest.raises(NotFound, match="no backups in memory://memory for database 'sales'"):
        resolve_backup(storage, "latest", "sales")
    records, _ = backup_records(storage)
    doomed = to_remove(plan(records, RetentionPolicy(daily_days=30, weekly_weeks=4, monthly_months=3)))
    kept = sorted(set(ids) - set(doomed))
    assert ids[-30:] == kept[-30:] and len(kept) < 40
    for backup_id in doomed:
        storage.delete_backup(backup_id)
    assert [m.backup_id for m in list_backups(storage)] == kept


def test_copy_proves_every_byte_and_a_flipped_byte_is_refused() -> None:
    source, target = MemoryStorage("a"), MemoryStorage("b")
    m = make_backup(source, "backup_20261101_020000", payload=b"x" * 1000)
    copied, checks = copy_backup(source, target, m.backup_id)
    assert copied == m and checks == ["crm.dump.zst: sha256 matches the manifest"]
    assert copy_backup(source, target, m.backup_id)[1] == ["already uploaded, manifest identical"]
    damaged = make_backup(source, "backup_20261102_020000", payload=b"y" * 1000)
    data = bytearray(source.backups[damaged.backup_id]["crm.dump.zst"])
    data[500] ^= 0xFF
    source.backups[damaged.backup_id]["crm.dump.zst"] = bytes(data)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        copy_backup(source, target, damaged.backup_id, abandon_on_failure=True)
    assert target.list_backup_ids() == [m.backup_id] and target.claimed_ids() == [m.backup_id]


def test_garbage_collection_removes_only_stale_incomplete_backups() -> None:
    storage = MemoryStorage()
    make_backup(storage, "backup_20261101_020000")
    storage.begin_backup("backup_20261102_020000")
    report = collect_storage_garbage(storage, "memory", timedelta(hours=1))
    assert report.incomplete_backups == []  # its writer may still be at work
    storage.claimed_at["backup_20261102_020000"] -= 7200
    report = collect_storage_garbage(storage, "memory", timedelta(hours=1))
    assert report.incomplete_backups == ["backup_20261102_020000"]
    assert storage.claimed_ids() == ["backup_20261101_020000"]


AWS = {"S3_BUCKET": "nightly", "S3_PREFIX": "/crm/", "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
       "AWS_DEFAULT_REGION": "eu-west-1", "ENABLE_S3_UPLOAD": "true"}
MINIO = {**AWS, "AWS_ENDPOINT_URL": "http://minio.internal:9000", "AWS_REGION": "us-east-1"}


@pytest.mark.parametrize("env", [AWS, MINIO], ids=["aws", "minio"])
def test_setup_fallback_and_wal_config_describe_one_bucket(env: dict[str, str], tmp_path: Path) -> None:
    """What `pgkeeper setup` saves, what the environment fallback builds and what the WAL
    commands read are the same bucket, addressed the same way."""
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.config import repository_from_env
    from pgkeeper.deployments.setup import repository_fields
    from pgkeeper.settings import s3_from_env
    from pgkeeper.wal import config as walconfig
    from pgkeeper.wal.setup import config_from_repository

    env = {**env, "BACKUP_DIR": str(tmp_path)}
    fallback = repository_from_env(env)
    saved = BackupRepository(**repository_fields(env, fallback.offsite))
    target = s3_from_env(env)
    assert target is not None
    assert fallback.s3_target() == saved.s3_target() == target
    assert config_from_repository(saved).s3 == target
    path = walconfig.write(tmp_path / "wal.json", walconfig.WalConfig(spool=str(tmp_path / "wal"), s3=target))
    # The file the database server reads names the same bucket and holds no secret.
    assert walconfig.load(str(path)).s3.public_dict() == target.public_dict()
    assert "s3cr3t" not in path.read_text() and "AKIA" not in path.read_text()
    assert target.prefix == "crm"
    if "AWS_ENDPOINT_URL" in env:
        assert target.path_style and target.region == "us-east-1"  # AWS_REGION wins
        assert fallback.s3().client.meta.config.s3["addressing_style"] == "path"
    else:
        assert not target.path_style and target.region == "eu-west-1"


def test_the_catalog_reads_through_a_flaky_network_with_truncated_bodies(s3_endpoint, s3_bucket) -> None:
    """Every read retries a truncated or reset body, small manifests included: listing the bucket
    through an endpoint failing 30% of requests succeeds every time."""
    from pgkeeper.settings import S3Target
    from pgkeeper.storage.s3 import S3Storage
    from tests.s3_faults import FaultyProxy

    def bucket(endpoint: str) -> S3Storage:
        return S3Storage(S3Target(bucket=s3_bucket, prefix="flaky-list", endpoint_url=endpoint, region="us-east-1",
                                  access_key_id="testing", secret_access_key="testing"))

    direct = bucket(s3_endpoint)
    ids = [new_backup_id(datetime(2026, 11, d, 2, tzinfo=UTC)) for d in range(1, 9)]
    for backup_id in ids:
        make_backup(direct, backup_id, payload=b"z" * 3000)
    with FaultyProxy(s3_endpoint, failure_rate=0.3, max_faults=200, seed=3) as proxy:
        flaky = bucket(proxy.url)
        for _ in range(3):
            assert [m.backup_id for m in list_backups(flaky)] == ids
        assert proxy.faults["truncate"] > 0, proxy.faults


def test_manifests_written_before_signing_are_refused_until_checked_and_signed(tmp_path: Path, capsys) -> None:
    import argparse

    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.cli.key_cmd import sign_existing

    raw = LocalStorage(tmp_path / "old")
    good = make_backup(raw, "backup_20261101_020000")
    bad = make_backup(raw, "backup_20261102_020000", payload=b"will be damaged")
    (raw.backup_dir(bad.backup_id) / bad.files[0].name).write_bytes(b"damaged!")
    storage = BackupRepository(path=str(tmp_path / "old")).storage()
    assert list_backups(storage) == []  # unsigned: not backups until checked and signed
    with pytest.raises(IntegrityError, match="is not signed"):
        resolve_backup(storage, "latest")
    args = argparse.Namespace(s3=False, backup_dir=str(tmp_path / "old"), repository_block=None)
    assert sign_existing(args) == 1
    assert "signed 1 manifest(s)" in capsys.readouterr().out
    assert storage.read_manifest(good.backup_id) is not None
    with pytest.raises(IntegrityError, match="is not signed"):
        storage.read_manifest(bad.backup_id)


def test_every_driver_answers_the_storage_class_verbs(storage: Storage) -> None:
    m = make_backup(storage, "backup_20261101_020000")
    assert storage.archive_state(m.backup_id).readable
    moved = storage.set_storage_class(m.backup_id, "GLACIER")
    if isinstance(storage, LocalStorage):  # a disk has no classes: nothing moves, all stays readable
        assert moved == 0 and storage.archive_state(m.backup_id).storage_class == "LOCAL"
        return
    assert moved == 1 and not storage.archive_state(m.backup_id).readable
    assert storage.read_manifest(m.backup_id) is not None  # the manifest never moves: listing works
    with pytest.raises(RepositoryError, match="restore request"):
        storage.open_file(m.backup_id, m.files[0].name)
    assert storage.request_restore(m.backup_id, 1, "Bulk").readable
    with storage.open_file(m.backup_id, m.files[0].name) as f:
        assert f.read() == b"dump bytes"

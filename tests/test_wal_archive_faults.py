"""The WAL archive's edges: another cluster's WAL, a differing duplicate after shipping, and
wal-fetch's exit codes for every way it can fail (broken config, unreachable S3, a corrupt
spool copy, a file missing everywhere). Separate processes, as PostgreSQL runs them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest

from pgkeeper.localcluster import free_port
from pgkeeper.wal.config import S3Target, WalConfig
from pgkeeper.wal.config import write as write_config
from tests.helpers import FAKE_SYSID, run_cli
from tests.test_wal_push import SEG, segment_bytes, stored

OTHER_SYSID = 7399999999999999999


def s3_config(tmp_path: Path, endpoint: str, bucket: str, spool: Path | None = None) -> Path:
    cfg = WalConfig(spool=str(spool or tmp_path / "spool"),
                    s3=S3Target(bucket=bucket, prefix="site-a", endpoint_url=endpoint, region="us-east-1",
                                access_key_id="testing", secret_access_key="testing"))
    path = tmp_path / "wal.json"
    write_config(path, cfg)
    return path


def ship(config_path: Path) -> None:
    from pgkeeper.tasks.wal_ship import ship_spool
    from pgkeeper.wal import config

    ship_spool(config.load(str(config_path)), 0)


def test_a_segment_of_another_cluster_is_refused_naming_both_identifiers(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (tmp_path / SEG).write_bytes(segment_bytes(3))
    assert run_cli("wal-push", "--spool", str(spool), str(tmp_path / SEG)).returncode == 0
    record = json.loads((spool / "archive.json").read_text())
    assert record == {"system_identifier": str(FAKE_SYSID), "pg_major": 15, "wal_segment_size": 16 << 20}
    before = stored(spool)

    other = "000000010000000000000004"
    (tmp_path / other).write_bytes(segment_bytes(5, name=other, sysid=OTHER_SYSID))
    r = run_cli("wal-push", "--spool", str(spool), str(tmp_path / other))
    assert r.returncode == 1
    assert str(OTHER_SYSID) in r.stderr and str(FAKE_SYSID) in r.stderr and other in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert stored(spool) == before

    # Not WAL at all, or WAL under another segment's name: refused too.
    (tmp_path / other).write_bytes(b"\0" * 8192)
    r = run_cli("wal-push", "--spool", str(spool), str(tmp_path / other))
    assert r.returncode == 1 and "page header" in r.stderr
    (tmp_path / other).write_bytes(segment_bytes(5, name=SEG))
    r = run_cli("wal-push", "--spool", str(spool), str(tmp_path / other))
    assert r.returncode == 1 and f"segment {SEG}" in r.stderr
    assert stored(spool) == before


def test_a_differing_duplicate_is_refused_after_shipping(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    config_path = s3_config(tmp_path, s3_endpoint, s3_bucket)
    spool = tmp_path / "spool"
    seg = tmp_path / SEG
    seg.write_bytes(segment_bytes(3))
    assert run_cli("wal-push", "--config", str(config_path), str(seg)).returncode == 0
    ship(config_path)
    assert not list(spool.rglob("*.zst"))  # shipped and gone from the spool
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="site-a/wal/")["Contents"]}
    assert "site-a/wal/archive.json" in keys  # the bucket's prefix knows its cluster too

    again = run_cli("wal-push", "--config", str(config_path), str(seg))
    assert again.returncode == 0, again.stderr  # identical: accepted
    seg.write_bytes(segment_bytes(7))
    clash = run_cli("wal-push", "--config", str(config_path), str(seg))
    assert clash.returncode == 1
    assert SEG in clash.stderr and "different content" in clash.stderr and "shipped" in clash.stderr
    assert not list(spool.rglob("*.zst"))
    out = tmp_path / "out"
    assert run_cli("wal-fetch", "--config", str(config_path), SEG, str(out)).returncode == 0
    assert out.read_bytes() == segment_bytes(3)


def test_a_bucket_prefix_of_another_cluster_gets_nothing_shipped(tmp_path: Path, s3_endpoint: str,
                                                                  s3_bucket: str) -> None:
    (tmp_path / "a").mkdir()
    first = s3_config(tmp_path / "a", s3_endpoint, s3_bucket)
    (tmp_path / SEG).write_bytes(segment_bytes(3))
    assert run_cli("wal-push", "--config", str(first), str(tmp_path / SEG)).returncode == 0
    ship(first)
    (tmp_path / "b").mkdir()
    second = s3_config(tmp_path / "b", s3_endpoint, s3_bucket)
    other = "000000010000000000000007"
    (tmp_path / other).write_bytes(segment_bytes(5, name=other, sysid=OTHER_SYSID))
    assert run_cli("wal-push", "--config", str(second), str(tmp_path / other)).returncode == 0
    from pgkeeper.wal.identity import ForeignCluster

    with pytest.raises(ForeignCluster, match=f"{FAKE_SYSID}.*{OTHER_SYSID}"):
        ship(second)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="site-a/wal/")["Contents"]]
    assert not [k for k in keys if other in k]


def test_wal_fetch_exit_codes_never_read_as_not_found(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    dest = tmp_path / "dest"
    # A config holding null, an S3 endpoint without a scheme, an unparsable argument list: stop (>125).
    (tmp_path / "null.json").write_text("null")
    r = run_cli("wal-fetch", "--config", str(tmp_path / "null.json"), SEG, str(dest))
    assert r.returncode == 255 and "null.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "noscheme.json").write_text(json.dumps(
        {"spool": str(tmp_path / "spool"), "s3": {"bucket": s3_bucket, "endpoint_url": "127.0.0.1:9"}}))
    r = run_cli("wal-fetch", "--config", str(tmp_path / "noscheme.json"), SEG, str(dest))
    assert r.returncode == 255 and "scheme" in r.stderr
    r = run_cli("wal-fetch", "--no-such-flag", SEG, str(dest))
    assert r.returncode == 255

    # S3 unreachable: the file may be there, so recovery must stop, not end.
    (tmp_path / "down").mkdir()
    down = s3_config(tmp_path / "down", f"http://127.0.0.1:{free_port()}", s3_bucket)
    # Two attempts, not ten: what is proved is the exit code, not a minute of botocore's backoff.
    r = run_cli("wal-fetch", "--config", str(down), SEG, str(dest), env={"AWS_MAX_ATTEMPTS": "2"})
    assert r.returncode == 255 and "listing s3://" in r.stderr and "failed" in r.stderr
    assert not dest.exists()

    # A corrupt spool copy: the S3 copy is used.
    config_path = s3_config(tmp_path, s3_endpoint, s3_bucket)
    (tmp_path / SEG).write_bytes(segment_bytes(3))
    assert run_cli("wal-push", "--config", str(config_path), str(tmp_path / SEG)).returncode == 0
    from pgkeeper.tasks.wal_ship import ship_spool
    from pgkeeper.wal import config

    ship_spool(config.load(str(config_path)), 3600)  # shipped, the spool copy kept
    obj = next((tmp_path / "spool").rglob("*.zst"))
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    r = run_cli("wal-fetch", "--config", str(config_path), SEG, str(dest))
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == segment_bytes(3) and "corrupt" in r.stderr

    # Missing from the spool and from S3, both confirmed: the only exit 1, and quiet.
    r = run_cli("wal-fetch", "--config", str(config_path), "000000010000000000000009", str(tmp_path / "none"))
    assert (r.returncode, r.stderr) == (1, "")


def test_a_dump_into_a_repository_of_another_cluster_is_refused(conn, repo, tmp_path: Path) -> None:
    from pgkeeper.flows.backup import backup
    from pgkeeper.wal.identity import ArchiveIdentity, ForeignCluster, record

    record(str(repo.local().wal_dir), ArchiveIdentity(str(OTHER_SYSID), 15, 16 << 20))
    block = f"foreign-repo-{uuid.uuid4().hex[:8]}"
    repo.save(block)
    conn.save(block + "-db")
    state = backup(connection_block=block + "-db", repository_block=block, return_state=True)
    assert state.is_failed()
    with pytest.raises(ForeignCluster, match=f"cluster {OTHER_SYSID}") as err:
        state.result()
    assert "\n" not in str(err.value)
    assert not list(repo.local().backups_dir.glob("backup_*"))


def test_the_server_user_still_pushes_after_root_shipped(s3_endpoint: str, s3_bucket: str) -> None:
    import shlex
    import shutil
    import subprocess

    from pgkeeper.localcluster import scratch_dir
    from pgkeeper.pgtools import as_server_user
    from pgkeeper.wal.command import pgkeeper_command
    from pgkeeper.wal.setup import prepare_spool, server_ids

    base = scratch_dir("pgkeeper-ledger-")
    try:
        spool = prepare_spool(base / "spool")
        config_path = s3_config(base, s3_endpoint, s3_bucket, spool=spool)
        ids = server_ids()
        if ids:
            import os

            os.chown(config_path, *ids)
        as_server = as_server_user()
        later = "000000010000000000000004"
        for name, seed in ((SEG, 3), (later, 5)):
            (base / name).write_bytes(segment_bytes(seed, name=name))
            (base / name).chmod(0o644)

        def push(name: str) -> subprocess.CompletedProcess:
            argv = [*as_server, *shlex.split(pgkeeper_command()), "wal-push", "--config", str(config_path),
                    str(base / name)]
            return subprocess.run(argv, capture_output=True, text=True, timeout=60)

        assert push(SEG).returncode == 0
        ship(config_path)  # as root: the ledger it writes must stay readable by the server's user
        r = push(SEG)
        assert r.returncode == 0, r.stderr
        r = push(later)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_aws_max_attempts_sets_the_s3_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgkeeper.storage import s3core
    from pgkeeper.wal.config import S3Target as Target

    def total_attempts() -> int:
        client = s3core.make_client(Target(bucket="b", endpoint_url="http://127.0.0.1:9", region="us-east-1"))
        return client.meta.config.retries["total_max_attempts"]

    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    assert total_attempts() == total_attempts() == 11  # ten retries after the first attempt
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert total_attempts() == 3
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "many")  # not a number: pgkeeper's default
    assert total_attempts() == 11

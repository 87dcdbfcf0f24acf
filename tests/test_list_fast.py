"""`pgkeeper list` with BACKUP_DIR (and `list --s3` with S3_BUCKET) reads the repository without
Prefect or prefect-aws: a plain repository from the environment, the same verbs as the block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.repository import DEFAULTS, PlainRepository, repository_from_env
from tests.helpers import ROOT
from tests.test_retention_flow import s3_env
from tests.test_storage_interface import make_backup

HEAVY = ["prefect", "prefect_aws"]
# Runs `pgkeeper list` in this fresh process and reports which heavy modules it imported.
PROBE = ("import json, sys\n"
         "from pgkeeper.cli.main import main\n"
         "code = main(sys.argv[1:])\n"
         f"print(json.dumps({{'code': code, 'loaded': [m for m in {HEAVY!r} if m in sys.modules],\n"
         "                    'retention': 'pgkeeper.retention' in sys.modules}))\n")


def list_in_subprocess(env: dict[str, str], *args: str) -> tuple[str, dict]:
    import os

    full = {**os.environ, **env}  # a Prefect API is configured, and still not imported
    out = subprocess.run([sys.executable, "-c", PROBE, "list", *args], env=full, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    *listing, last = out.stdout.strip().splitlines()
    return "\n".join(listing), json.loads(last)


def test_plain_repository_has_the_block_defaults() -> None:
    block = BackupRepository()
    assert set(DEFAULTS) == set(BackupRepository.model_fields)
    plain = PlainRepository()
    for name in DEFAULTS:
        assert getattr(plain, name) == getattr(block, name), name


def test_list_reads_the_local_repository_without_prefect(tmp_path: Path) -> None:
    env = {"BACKUP_DIR": str(tmp_path / "repo")}
    storage = repository_from_env(env).storage()
    storage.ensure_writable()
    make_backup(storage, "backup_20261101_020000")
    make_backup(storage, "backup_20261102_020000", database="shop")

    listing, probe = list_in_subprocess(env)
    # Local files have no tiers to plan (no retention tiers set): not even the retention module.
    assert probe == {"code": 0, "loaded": [], "retention": False}
    assert "backup_20261101_020000" in listing and "backup_20261102_020000" in listing
    assert f"2 backup(s) in {tmp_path / 'repo'}" in listing

    only_shop, _ = list_in_subprocess(env, "--database", "shop")
    assert "backup_20261102_020000" in only_shop and "backup_20261101_020000" not in only_shop


def test_list_s3_reads_the_bucket_without_prefect(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    env = {**s3_env(s3_endpoint, s3_bucket, "nightly"), "BACKUP_DIR": str(tmp_path / "empty")}
    # The plain repository reaches the same bucket the block from these variables does.
    from pgkeeper.config import repository_from_env as block_from_env

    assert repository_from_env(env).s3_target() == block_from_env(env).s3_target()
    make_backup(repository_from_env(env).storage("s3"), "backup_20261103_020000")

    listing, probe = list_in_subprocess(env, "--s3")
    assert (probe["code"], probe["loaded"]) == (0, [])
    assert "backup_20261103_020000" in listing
    assert f"1 backup(s) in s3://{s3_bucket}/nightly" in listing

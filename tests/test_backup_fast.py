"""`pgkeeper backup` imports only what its repository needs: no prefect-aws (26 MB, about 0.7 s)
without an offsite bucket, whether the repository comes from BACKUP_DIR or from a saved block;
a saved block with a bucket still loads it, in a process that never imported prefect-aws.

Checked through `sys.modules` of fresh processes, never through a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from abc import ABC

from prefect_aws import AwsCredentials, S3Bucket
from pydantic import Field, SecretStr

from pgkeeper.blocks.repository import OFFSITE_DESCRIPTION, BackupRepository
from tests.helpers import ROOT

HEAVY = ["prefect_aws", "boto3", "aiobotocore"]
# Runs the command line in this fresh process and reports which heavy modules it imported.
PROBE = ("import json, sys\n"
         "from pgkeeper.cli.main import main\n"
         "code = main(sys.argv[1:])\n"
         f"print(json.dumps({{'code': code, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n")
# Loads a saved repository block in a fresh process: what its offsite is, and what got imported.
LOAD = ("import json, sys\n"
        "from pgkeeper.blocks.repository import BackupRepository\n"
        "before = 'prefect_aws' in sys.modules\n"
        "repo = BackupRepository.load(sys.argv[1])\n"
        "t = repo.s3_target()\n"
        "print(json.dumps({'before': before, 'offsite': type(repo.offsite).__name__, 'bucket': t and t.bucket,\n"
        "                  'prefix': t and t.prefix, 'secret_ok': bool(t and t.secret_access_key == 'sk-x'),\n"
        "                  'loaded': 'prefect_aws' in sys.modules}))\n")


def fresh(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, **(env or {})},
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_backup_without_a_bucket_does_not_import_prefect_aws(pg_env):
    probe = fresh(PROBE, "backup", env=pg_env)
    assert probe == {"code": 0, "loaded": []}


def test_backup_from_saved_blocks_without_a_bucket_does_not_import_prefect_aws(conn, repo, pg_env):
    suffix = uuid.uuid4().hex[:8]
    conn.save(f"fast-db-{suffix}")
    repo.save(f"fast-repo-{suffix}")
    probe = fresh(PROBE, "backup", "--connection-block", f"fast-db-{suffix}",
                  "--repository-block", f"fast-repo-{suffix}")
    assert probe == {"code": 0, "loaded": []}


def test_a_saved_bucket_loads_in_a_process_without_prefect_aws(tmp_path):
    """Both ways a bucket is saved in a repository: a saved S3Bucket block referenced, and inline."""
    suffix = uuid.uuid4().hex[:8]
    creds = AwsCredentials(aws_access_key_id="ak-x", aws_secret_access_key=SecretStr("sk-x"), region_name="us-east-1")
    creds.save(f"fast-creds-{suffix}")
    S3Bucket(bucket_name="fast-bucket", bucket_folder="nightly",
             credentials=AwsCredentials.load(f"fast-creds-{suffix}")).save(f"fast-bucket-{suffix}")
    saved_bucket = S3Bucket.load(f"fast-bucket-{suffix}")
    BackupRepository(path=str(tmp_path / "a"), offsite=saved_bucket).save(f"fast-ref-{suffix}")
    BackupRepository(path=str(tmp_path / "b"), offsite=S3Bucket(bucket_name="inline-bucket", credentials=creds)
                     ).save(f"fast-inline-{suffix}")
    BackupRepository(path=str(tmp_path / "c")).save(f"fast-none-{suffix}")

    assert fresh(LOAD, f"fast-ref-{suffix}") == {"before": False, "offsite": "S3Bucket", "bucket": "fast-bucket",
                                                 "prefix": "nightly", "secret_ok": True, "loaded": True}
    assert fresh(LOAD, f"fast-inline-{suffix}") == {"before": False, "offsite": "S3Bucket", "bucket": "inline-bucket",
                                                    "prefix": "", "secret_ok": True, "loaded": True}
    assert fresh(LOAD, f"fast-none-{suffix}") == {"before": False, "offsite": "NoneType", "bucket": None,
                                                  "prefix": None, "secret_ok": False, "loaded": False}


def test_the_schema_is_the_declared_one():
    """Saved blocks and the UI see `offsite: S3Bucket | None`, checksum included, as before the
    stand-in type: a class declared that way (ABC: kept out of Prefect's block registry) agrees."""

    class Declared(BackupRepository, ABC):  # the block as it was declared before the stand-in
        offsite: S3Bucket | None = Field(default=None, description=OFFSITE_DESCRIPTION)

    Declared.__name__ = Declared.__qualname__ = "BackupRepository"
    Declared.__doc__ = BackupRepository.__doc__
    Declared.model_rebuild(force=True)
    assert BackupRepository.model_json_schema() == Declared.model_json_schema()
    assert BackupRepository._calculate_schema_checksum() == Declared._calculate_schema_checksum()
    assert BackupRepository.model_json_schema()["block_schema_references"]["offsite"]["block_type_slug"] == "s3-bucket"

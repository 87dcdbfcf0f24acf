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
from tests.helpers import ROOT, wait_for

# prefect-aws without a bucket; FastAPI, which Prefect imports to record parameters that are JSON already.
HEAVY = ["prefect_aws", "boto3", "aiobotocore", "fastapi"]
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


def test_backup_imports_its_flow_without_the_collector_and_turns_it_back_on(pg_env):
    """pgkeeper/lean_imports.py: the collector is off while the flow is imported, then on again
    with what was imported frozen; a backup made that way is listed as any other."""
    code = ("import gc, json, sys\n"
            "from pgkeeper.cli.main import main\n"
            "code = main(sys.argv[1:])\n"
            "print(json.dumps({'code': code, 'enabled': gc.isenabled(), 'frozen': gc.get_freeze_count()}))\n")
    probe = fresh(code, "backup", env=pg_env)
    assert probe["code"] == 0 and probe["enabled"] and probe["frozen"] > 50_000, probe
    listed = subprocess.run([sys.executable, "-m", "pgkeeper.cli.main", "list"], env={**os.environ, **pg_env},
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert listed.returncode == 0 and pg_env["POSTGRES_DB"] in listed.stdout, listed.stdout + listed.stderr


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


def test_plain_parameters_are_recorded_as_prefect_records_them():
    from pathlib import Path

    from fastapi.encoders import jsonable_encoder

    from pgkeeper.flows.backup import backup

    plain = {"database": "shop", "port": 5432, "labels": ["pre-restore"], "backup_dir": None, "on": True,
             "ratio": 1.5, "nested": {"k": [1, "a"]}}
    assert backup.serialize_parameters(plain) == jsonable_encoder(plain)
    other = {"database": "shop", "path": Path("/backups"), "pair": ("a", 1)}  # Prefect's encoding, as before
    assert backup.serialize_parameters(other) == {"database": "shop", "path": "/backups", "pair": ["a", 1]}


def test_the_parameter_schema_is_prefect_s_built_when_first_read():
    """Declaring the flows (what a command's import does) builds no parameter schema; reading it
    (a deployment) gives Prefect's own, and other flows are declared as before."""
    probe = ("import json, sys\n"
             "import pgkeeper.flows.backup as b, pgkeeper.flows.base_backup as bb\n"
             "declared = 'pydantic.v1' in sys.modules\n"
             "from prefect import flow\n"
             "from prefect.utilities.callables import parameter_schema\n"
             "@flow\n"
             "def other(x: int, y: str = 'a'): pass\n"
             "same = [f.parameters == parameter_schema(f.fn) for f in (b.backup, bb.base_backup, other)]\n"
             "names = sorted(b.backup.parameters.properties)\n"
             "print(json.dumps({'declared': declared, 'same': same, 'names': names}))\n")
    assert fresh(probe) == {"declared": False, "same": [True, True, True],
                            "names": sorted(["database", "connection_block", "repository_block", "host", "port",
                                             "user", "backup_dir", "labels"])}


def test_the_backup_run_keeps_its_tags_and_its_task_runs_ask_for_no_tag_slots(conn, repo):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from pgkeeper.flows.backup import backup
    from tests.test_backup import save_blocks

    db_block, repo_block = save_blocks(conn, repo)
    state = backup(connection_block=db_block, repository_block=repo_block, return_state=True)
    state.result()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        assert {"pgkeeper", f"db:{conn.database}", "backup"} <= set(run.tags)
        # Task runs reach the API as events: wait for the steps to be recorded.
        def steps():  # noqa: ANN202
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            return runs if {t.name.rsplit("-", 1)[0] for t in runs} >= {"preflight", "dump", "write-manifest"} else None

        tasks = wait_for(steps, 60, "the backup's task runs")
    assert all(t.tags == [] for t in tasks), [(t.name, t.tags) for t in tasks]


def test_a_server_loading_the_collections_meets_the_bucket_type_before_the_repository() -> None:
    """A Prefect server registers the block classes of the collections it loads in the order they
    were defined and refuses a schema whose nested block type is not registered yet: S3Bucket
    must come before the repository, whichever collection the server loads first."""
    probe = ("import json\n"
             "from prefect.blocks.core import Block\n"
             "from prefect.plugins import load_prefect_collections\n"
             "from prefect.utilities.dispatch import get_registry_for_type\n"
             "load_prefect_collections()\n"
             "print(json.dumps(list(get_registry_for_type(Block))))\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    order = json.loads(r.stdout.strip().splitlines()[-1])
    assert order.index("aws-credentials") < order.index("s3-bucket") < order.index("pgkeeper-backup-repository")

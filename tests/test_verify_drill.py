"""The restore drill's scratch database: on another server when asked, and never left behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from pgkeeper.localcluster import LocalCluster, scratch_dir
from tests.helpers import create_database, database_exists
from tests.test_verify import env, run_verify, scratch_databases, take_backup  # noqa: F401 (env: fixture)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def second_server() -> Iterator[LocalCluster]:
    base = scratch_dir("pgkeeper-pg2-")
    cluster = LocalCluster(base / "data", password="other-" + uuid.uuid4().hex[:8]).init().start()
    try:
        yield cluster
    finally:
        cluster.destroy()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_drill_on_a_separate_server_named_by_a_block(env, pg, second_server):  # noqa: F811
    from pgkeeper.blocks.postgres import PostgresConnection

    block = "scratch-" + uuid.uuid4().hex[:8]
    PostgresConnection(host=second_server.host, port=second_server.port, user="postgres",
                       password=SecretStr(second_server.password)).save(block)
    take_backup(env)

    report = run_verify(env, scratch_connection_block=block)
    assert report.ok and report.scratch_server == f"postgres@127.0.0.1:{second_server.port}"
    assert scratch_databases(pg) == [] and scratch_databases(second_server) == []


def test_unknown_scratch_block_is_one_clear_error(env, pg):  # noqa: F811
    from pgkeeper.errors import NotFound

    take_backup(env)
    with pytest.raises(NotFound, match="no pgkeeper-postgres-connection block named 'no-such-block'"):
        run_verify(env, scratch_connection_block="no-such-block")


def test_crash_hook_drops_a_scratch_database_left_behind(env, pg):  # noqa: F811
    """What on_crashed / on_cancellation do when the drill's own cleanup never ran (e.g. SIGKILL)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Crashed

    from pgkeeper.tasks.drill import drop_scratch_after_run, scratch_database_name

    run = FlowRun(id=uuid.uuid4(), name="test-run", flow_id=uuid.uuid4(),
                  parameters={"connection_block": None, "restore": True})
    name = scratch_database_name(run.id)
    create_database(pg, name)

    drop_scratch_after_run(None, run, Crashed())
    assert not database_exists(pg, name)
    drop_scratch_after_run(None, run, Crashed())  # nothing left: still fine


def test_work_area_is_removed(tmp_path: Path):
    from pgkeeper.tasks.drill import work_area

    with pytest.raises(RuntimeError), work_area(str(tmp_path)) as work:
        (work / "x.dump").write_bytes(b"data")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_verify_from_s3_records_in_the_bucket_and_locally(env, pg, s3_endpoint, s3_bucket,  # noqa: F811
                                                          monkeypatch):
    import shutil

    from pgkeeper.config import repository_from_env
    from pgkeeper.manifest import Manifest

    s3 = {"S3_BUCKET": s3_bucket, "S3_PREFIX": "crm-backups", "ENABLE_S3_UPLOAD": "true",
          "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    m = take_backup(env)  # uploads the offsite copy
    bucket = repository_from_env().storage("s3")
    local = repository_from_env().local()

    # Verified locally: both copies record it.
    run_verify(env)
    assert Manifest.from_bytes(bucket.read_manifest(m.backup_id)).status == "verified"
    assert Manifest.from_bytes(local.read_manifest(m.backup_id)).status == "verified"

    # The local disk is lost: the bucket alone is verified, and records it.
    shutil.rmtree(Path(env["BACKUP_DIR"]) / "backups" / m.backup_id)
    report = run_verify(env, source="s3", backup=m.backup_id + ".sql.gz")
    assert report.ok and report.source == "s3" and report.restore_seconds
    recorded = Manifest.from_bytes(bucket.read_manifest(m.backup_id))
    assert [v.method for v in recorded.verifications] == ["quick", "restore", "restore"]
    assert scratch_databases(pg) == []

"""The restore drill's scratch database: on another server when asked, and never left behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from pgkeeper.localcluster import LocalCluster, throwaway_cluster
from tests.helpers import create_database, database_exists
from tests.test_verify import env, run_verify, scratch_databases, take_backup  # noqa: F401 (env: fixture)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def second_server() -> Iterator[LocalCluster]:
    with throwaway_cluster("pgkeeper-pg2-", "other-" + uuid.uuid4().hex[:8]) as (cluster, _base):
        yield cluster


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

    from tests.helpers import run_cli_here

    cli = run_cli_here("verify", "--from-s3", "--no-restore", env={**env, **s3})
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.splitlines()[0].endswith(" PASS") and "restore not requested" in cli.stdout
    assert Manifest.from_bytes(bucket.read_manifest(m.backup_id)).verifications[-1].method == "quick"


def test_cancelling_a_served_run_mid_restore_drops_the_scratch_database(env, pg, crm_db):  # noqa: F811
    """The UI's Cancel button: the runner stops the run; the on_cancellation hook runs too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psycopg
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    from tests.helpers import ROOT
    from tests.test_verify import SLOW_INDEX, restoring_sessions

    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute(SLOW_INDEX)
    take_backup(env)
    name = "verify-cancel-" + uuid.uuid4().hex[:6]
    server = subprocess.Popen(
        [sys.executable, "-c", f"from pgkeeper.flows.verify import verify; verify.serve(name={name!r}, "
                               "print_starting_message=False, pause_on_shutdown=False)"],
        env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        run = None
        deadline = time.monotonic() + 90
        while run is None and time.monotonic() < deadline:
            try:
                run = run_deployment(f"verify/{name}", timeout=0,
                                     parameters={"connection_block": None, "repository_block": None,
                                                 "backup_dir": env["BACKUP_DIR"]})
            except Exception:  # the deployment is not registered yet
                time.sleep(0.5)
        assert run is not None, "the served deployment never appeared"
        scratch = f"pgkeeper_verify_{run.id.hex[:8]}"
        while scratch not in restoring_sessions(pg) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scratch in restoring_sessions(pg), "the drill never reached the slow index"

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(), force=True)
            while time.monotonic() < deadline:
                state = client.read_flow_run(run.id).state
                if state and state.is_final() and not database_exists(pg, scratch):
                    break
                time.sleep(0.3)
        assert state is not None and state.is_cancelled(), state
        assert not database_exists(pg, scratch)
        assert scratch_databases(pg) == []
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stderr.close()


def test_unreachable_scratch_server_fails_the_run_but_not_the_backup(env, pg):  # noqa: F811
    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.localcluster import free_port
    from pgkeeper.tasks.verify_checks import VerificationFailed
    from tests.test_verify import read_manifest

    block = "dead-" + uuid.uuid4().hex[:8]
    PostgresConnection(host="127.0.0.1", port=free_port(), user="postgres", password=SecretStr("x"),
                       connect_timeout=2).save(block)
    m = take_backup(env)
    with pytest.raises(VerificationFailed, match=f"backup {m.backup_id} could not be verified") as caught:
        run_verify(env, scratch_connection_block=block)
    report = caught.value.report
    assert report.checks[2].status == "FAIL" and "server unreachable" in report.checks[2].title
    assert report.lines()[-1].endswith("nothing recorded in its manifest.")
    assert read_manifest(env, m.backup_id).verifications == m.verifications  # still just the backup's check


def test_a_scratch_database_left_by_a_killed_run_is_reported_not_dropped(env, pg, crm_db):  # noqa: F811
    import time

    from tests.helpers import drop_database
    from tests.test_verify import warning_events

    leftover = "pgkeeper_verify_deadbeef"
    create_database(pg, leftover)
    try:
        take_backup(env)
        assert run_verify(env).ok
        assert database_exists(pg, leftover)  # it might be another drill's: a person decides
        deadline = time.monotonic() + 30
        while not (events := [e for e in warning_events(crm_db) if e.payload["kind"] == "scratch-leftover"]) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert events and events[0].payload["leftovers"] == [leftover]
        assert leftover in events[0].payload["message"]
    finally:
        drop_database(pg, leftover)


def test_a_killed_verify_leaves_no_pg_restore_and_the_next_one_drops_its_scratch(env, pg, crm_db,  # noqa: F811
                                                                                 tmp_path):
    """SIGKILL of `pgkeeper verify` mid-drill: its pg_restore dies with it (it would otherwise go on
    filling the scratch database), and the next verify drops the dead run's scratch database."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psycopg

    from tests.helpers import ROOT, pids_with_arg

    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:  # a drill that takes a moment
        c.execute("CREATE TABLE bulk AS SELECT i, md5(i::text) AS t FROM generate_series(1, 300000) i")
    take_backup(env)
    work = tmp_path / "work"  # the verify's work area (TMPDIR for the killed one)
    work.mkdir()
    mine = f"TMPDIR={work}".encode()  # this verify's pg_restore, not another xdist worker's drill
    proc = subprocess.Popen([sys.executable, "-m", "pgkeeper.cli.main", "verify"],
                            env={**os.environ, **env, "TMPDIR": str(work)},
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not pids_with_arg(b"--dbname=pgkeeper_verify_", environ=mine) and time.monotonic() < deadline:
            assert proc.poll() is None, "verify ended before its drill could be interrupted"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(1.0)
        assert pids_with_arg(b"--dbname=pgkeeper_verify_", environ=mine) == []  # died with its parent
        left = scratch_databases(pg)
        assert len(left) == 1  # the killed run's, with nobody writing into it
        assert [p.name.startswith("pgkeeper-verify-") for p in work.iterdir()] == [True]  # its dump
        assert run_verify(env, work_dir=str(work)).ok
        assert scratch_databases(pg) == []  # dropped: its maker is provably gone
        assert list(work.iterdir()) == []  # and its work area removed
    finally:
        if proc.poll() is None:
            proc.kill()
        from tests.helpers import drop_database

        for name in scratch_databases(pg):
            drop_database(pg, name)

"""A restore that replaces a database is always confirmed by a person, and every confirmation
is recorded: in the run's artifact and in the repository's restore log (`restores/`).

The deployment run is executed the way a process worker executes it (`python -m prefect.engine`
with PREFECT__FLOW_RUN_ID, in a child process) against this session's API.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_cli_here, table_fingerprints
from tests.test_restore import change_data, cleanup_copies, old_copies  # noqa: F401 (fixture)
from tests.test_restore_confirm import read_run, wait_for_log


def restore_log(backup_dir: str) -> list[dict]:
    from pgkeeper.storage.local import LocalStorage
    from pgkeeper.tasks.restore_confirmation import read_restore_log

    return read_restore_log(LocalStorage(Path(backup_dir)))


def artifact_of(flow_run_id, key_start: str) -> str:  # noqa: ANN001
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(str(a.data) for a in artifacts if (a.key or "").startswith(key_start))


def suspended_run(run_id: str, timeout: float = 120):  # noqa: ANN201
    """The run once it waits suspended with its form saved, else None."""
    import time

    from prefect.input.actions import read_flow_run_input

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = read_run(run_id)
        if run.state and run.state.is_paused() and read_flow_run_input("suspended-1-description", flow_run_id=run.id):
            return run
        time.sleep(0.3)
    return None


def deployment_run(parameters: dict) -> str:
    """A flow run of a restore deployment, created through the API as the UI does; its id."""
    import uuid

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("restore")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=f"confirm-test-{uuid.uuid4().hex[:6]}",
            entrypoint="pgkeeper/flows/restore.py:restore", path=str(ROOT))
        return str(client.create_flow_run_from_deployment(deployment_id, parameters=parameters).id)


def test_a_deployment_run_cannot_skip_the_form_with_confirmed(pg, crm_db, pg_env, cleanup_copies,  # noqa: F811
                                                              tmp_path):
    from prefect.flow_runs import resume_flow_run

    assert run_cli_here("backup", env=pg_env).returncode == 0
    change_data(pg, crm_db)
    changed = table_fingerprints(pg.conninfo(crm_db))
    run_id = deployment_run({"backup": "latest", "confirmed": True, "safety_backup": False})
    # What a process worker runs for a flow run: the engine, told the run's id by its environment.
    # A deployment run waits suspended: the process exits, and after the answer a worker runs the
    # flow again (here: a second engine process).
    log = tmp_path / "engine.log"
    for execution in ("asks", "resumed"):
        with open(log, "ab") as out:
            worker_child = subprocess.Popen([sys.executable, "-m", "prefect.engine"], cwd=ROOT,
                                            env={**os.environ, **pg_env, "PREFECT__FLOW_RUN_ID": run_id},
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert worker_child.wait(180) == 0, log.read_text()[-3000:]
        finally:
            if worker_child.poll() is None:
                os.killpg(worker_child.pid, 9)
                worker_child.wait()
        if execution == "asks":
            paused = suspended_run(run_id, timeout=60)
            assert paused is not None, log.read_text()[-3000:]
            assert wait_for_log(run_id, "confirmed=true is ignored in a deployment run")
            # Waiting with confirmed=true: nothing was replaced, nothing recorded.
            assert table_fingerprints(pg.conninfo(crm_db)) == changed and old_copies(pg, crm_db) == []
            assert restore_log(pg_env["BACKUP_DIR"]) == []
            resume_flow_run(paused.id, run_input={"confirm": True, "database_name": crm_db})
    assert read_run(run_id).state.is_completed(), log.read_text()[-3000:]
    [record] = restore_log(pg_env["BACKUP_DIR"])
    [kept] = old_copies(pg, crm_db)
    assert record["flow_run_id"] == run_id and record["how"] == "form" and record["typed_name"] == crm_db
    assert record["target"] == crm_db and record["kept_copy"] == kept and record["backup_id"].startswith("backup_")
    artifact = artifact_of(run_id, "restore-confirmation")
    assert "confirmed in the form, typed" in artifact and kept in artifact


def test_terminal_confirmations_are_recorded(pg, crm_db, pg_env, cleanup_copies):  # noqa: F811
    assert run_cli_here("backup", env=pg_env).returncode == 0
    change_data(pg, crm_db)
    done = run_cli_here("restore", "latest", "--yes", "--no-safety-backup", "--drop-old", env=pg_env)
    assert done.returncode == 0, done.stderr
    typed = subprocess.run([sys.executable, "-m", "pgkeeper.cli.main", "restore", "latest", "--no-safety-backup"],
                           env={**os.environ, **pg_env}, input=crm_db + "\n", capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert typed.returncode == 0, typed.stderr

    first, second = restore_log(pg_env["BACKUP_DIR"])
    assert (first["how"], first["typed_name"], first["kept_copy"], first["replaced_copy_dropped"]) == \
        ("--yes", None, None, True)
    [kept] = old_copies(pg, crm_db)
    assert (second["how"], second["typed_name"], second["kept_copy"]) == ("terminal", crm_db, kept)
    for record in (first, second):
        assert record["target"] == crm_db and record["backup_id"].startswith("backup_") and record["at"]
        run = read_run(record["flow_run_id"])
        assert run.state.is_completed() and run.name == record["flow_run_name"]
    assert "confirmed with --yes" in artifact_of(first["flow_run_id"], "restore-confirmation")
    summary = artifact_of(second["flow_run_id"], "restore-")
    assert f"confirmed at the terminal, typed '{crm_db}'" in summary and "**Confirmation**" in summary
    assert oct(Path(pg_env["BACKUP_DIR"], "restores").stat().st_mode & 0o777) == "0o700"


def worker_children(pid: int) -> list[str]:
    """The command lines of a process's descendants (from /proc: no psutil here)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:
            continue
        todo += parents.get(child, [])
    return [c for c in found if c]


@pytest.fixture(scope="module")
def restore_worker(pg):  # noqa: ANN001, ANN201
    """A process worker for a restore deployment of its own pool, on this session's API: the
    connection comes from its environment, the database and repository from each run's parameters.
    Yields (deployment id, worker process)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from pgkeeper.deployments.setup import engine_command
    from tests.conftest import PASSWORD
    from tests.test_service_e2e import stop

    pool = f"restore-pool-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name("restore")
        # The checkout as working directory: the worker runs the flow in place, no copy per run.
        deployment_id = client.create_deployment(flow_id=flow_id, name=f"suspend-{uuid.uuid4().hex[:6]}",
                                                 entrypoint="pgkeeper/flows/restore.py:restore", path=str(ROOT),
                                                 work_pool_name=pool, job_variables={"working_dir": str(ROOT),
                                                                                      "command": engine_command()})
    log = Path(tempfile.mkdtemp(prefix="pgkeeper-restore-worker-")) / "worker.log"
    env = {**os.environ, "POSTGRES_HOST": pg.host, "POSTGRES_PORT": str(pg.port), "POSTGRES_USER": "postgres",
           "POSTGRES_PASSWORD": PASSWORD, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "2"}
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                                   "process"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                  env=env)
    try:
        yield deployment_id, worker, log
    finally:
        stop(worker)
        with get_client(sync_client=True) as client:
            client.delete_work_pool(pool)
        shutil.rmtree(log.parent, ignore_errors=True)


def start_restore(deployment_id, parameters: dict) -> str:  # noqa: ANN001
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.create_flow_run_from_deployment(deployment_id, parameters=parameters).id)


@pytest.mark.timeout(900)
def test_the_wait_for_approval_holds_no_worker_and_restores_the_approved_plan(pg, crm_db, pg_env, prefect_api,
                                                                             restore_worker,
                                                                             cleanup_copies):  # noqa: F811
    """A process worker runs a replace restore: while the form waits, no process exists for the
    run (suspended, not paused); a newer backup made meanwhile is not what gets restored; the
    answer posted to the API resumes it on the worker."""
    import httpx

    from pgkeeper.catalog import list_backups
    from pgkeeper.storage.local import LocalStorage
    from tests.test_service_e2e import wait_for

    deployment_id, worker, log = restore_worker
    assert run_cli_here("backup", env=pg_env).returncode == 0
    approved_id = list_backups(LocalStorage(Path(pg_env["BACKUP_DIR"])))[-1].backup_id
    backed_up = table_fingerprints(pg.conninfo(crm_db))
    change_data(pg, crm_db)
    changed = table_fingerprints(pg.conninfo(crm_db))

    run_id = start_restore(deployment_id, {"backup": "latest", "safety_backup": False, "database": crm_db,
                                           "backup_dir": pg_env["BACKUP_DIR"], "confirm_timeout_seconds": 900})
    assert suspended_run(run_id, timeout=240) is not None, log.read_text()[-3000:]
    assert read_run(run_id).state.name == "Suspended"
    # The run's process is gone: the worker holds no child for it while the form waits.
    wait_for(lambda: not worker_children(worker.pid), 60, "the run's process to exit")
    assert table_fingerprints(pg.conninfo(crm_db)) == changed

    # A newer backup lands while the form waits: the approval is for the plan it showed.
    assert run_cli_here("backup", env=pg_env).returncode == 0
    newer = list_backups(LocalStorage(Path(pg_env["BACKUP_DIR"])))[-1].backup_id
    assert newer != approved_id

    for attempt in range(6):  # a busy SQLite API answers 503; Prefect's own client retries those too
        response = httpx.post(f"{prefect_api}/flow_runs/{run_id}/resume",
                              json={"run_input": {"confirm": True, "database_name": crm_db}}, timeout=30)
        if response.status_code not in (429, 503):
            break
        time.sleep(0.5 * 2**attempt)
    assert response.status_code in (200, 201) and response.json()["status"] == "ACCEPT", response.text
    final = wait_for(lambda: (s := read_run(run_id).state).is_final() and s, 400, "the resumed restore")
    assert final.is_completed(), (final.message, log.read_text()[-3000:])
    assert approved_id in final.message and newer not in final.message
    assert table_fingerprints(pg.conninfo(crm_db)) == backed_up != changed
    record = next(r for r in restore_log(pg_env["BACKUP_DIR"]) if r["flow_run_id"] == run_id)
    assert record["backup_id"] == approved_id and record["how"] == "form"


@pytest.mark.timeout(900)
def test_an_unanswered_suspended_restore_ends_cancelled_and_touches_nothing(pg, crm_db, pg_env, restore_worker,
                                                                           cleanup_copies):  # noqa: F811
    """Nobody answers: the run the restore scheduled at its deadline ends the wait Cancelled."""
    from tests.test_service_e2e import wait_for

    deployment_id, _worker, log = restore_worker
    assert run_cli_here("backup", env=pg_env).returncode == 0
    change_data(pg, crm_db)
    before = table_fingerprints(pg.conninfo(crm_db))
    run_id = start_restore(deployment_id, {"backup": "latest", "safety_backup": False, "database": crm_db,
                                           "backup_dir": pg_env["BACKUP_DIR"], "confirm_timeout_seconds": 3})
    final = wait_for(lambda: (s := read_run(run_id).state).is_final() and s, 400, "the unanswered restore to end")
    assert final.is_cancelled(), (final.message, log.read_text()[-3000:])
    assert f"no confirmation within 3 s: restore cancelled, database {crm_db} is unchanged" in final.message
    assert table_fingerprints(pg.conninfo(crm_db)) == before and old_copies(pg, crm_db) == []
    assert wait_for_log(run_id, f"database {crm_db} is unchanged")  # in the waiting run's own log too

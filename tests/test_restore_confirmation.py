"""A restore that replaces a database is always confirmed by a person, and every confirmation
is recorded: in the run's artifact and in the repository's restore log (`restores/`).

The deployment run is executed the way a process worker executes it (`python -m prefect.engine`
with PREFECT__FLOW_RUN_ID, in a child process) against this session's API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.helpers import ROOT, run_cli, table_fingerprints
from tests.test_restore import change_data, cleanup_copies, old_copies  # noqa: F401 (fixture)
from tests.test_restore_confirm import paused_run, read_run, wait_for_log


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

    assert run_cli("backup", env=pg_env).returncode == 0
    change_data(pg, crm_db)
    changed = table_fingerprints(pg.conninfo(crm_db))
    run_id = deployment_run({"backup": "latest", "confirmed": True, "safety_backup": False})
    # What a process worker runs for a flow run: the engine, told the run's id by its environment.
    log = tmp_path / "engine.log"
    with open(log, "wb") as out:
        worker_child = subprocess.Popen([sys.executable, "-m", "prefect.engine"], cwd=ROOT,
                                        env={**os.environ, **pg_env, "PREFECT__FLOW_RUN_ID": run_id},
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        paused, _ = paused_run(threading.Event(), timeout=180)
        assert paused is not None and str(paused.id) == run_id, log.read_text()[-3000:]
        assert wait_for_log(run_id, "confirmed=true is ignored in a deployment run")
        # Paused with confirmed=true: nothing was replaced, nothing recorded.
        assert table_fingerprints(pg.conninfo(crm_db)) == changed and old_copies(pg, crm_db) == []
        assert restore_log(pg_env["BACKUP_DIR"]) == []

        resume_flow_run(paused.id, run_input={"confirm": True, "database_name": crm_db})
        assert worker_child.wait(180) == 0
    finally:
        if worker_child.poll() is None:
            os.killpg(worker_child.pid, 9)
            worker_child.wait()
    assert read_run(run_id).state.is_completed()
    [record] = restore_log(pg_env["BACKUP_DIR"])
    [kept] = old_copies(pg, crm_db)
    assert record["flow_run_id"] == run_id and record["how"] == "form" and record["typed_name"] == crm_db
    assert record["target"] == crm_db and record["kept_copy"] == kept and record["backup_id"].startswith("backup_")
    artifact = artifact_of(run_id, "restore-confirmation")
    assert "confirmed in the form, typed" in artifact and kept in artifact


def test_terminal_confirmations_are_recorded(pg, crm_db, pg_env, cleanup_copies):  # noqa: F811
    assert run_cli("backup", env=pg_env).returncode == 0
    change_data(pg, crm_db)
    done = run_cli("restore", "latest", "--yes", "--no-safety-backup", "--drop-old", env=pg_env)
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

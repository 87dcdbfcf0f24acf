"""What a user sees of a run in the Prefect API (and so in the UI's runs list): a name that says
what ran, tags for the database and the kind of run, the result in the final state's message,
summary artifacts on the flow run itself; and expected errors as one line, never a traceback,
in the terminal and in the run's log, with the exit code of their kind."""

from __future__ import annotations

from datetime import UTC, datetime

from pgkeeper.errors import ExitCode
from pgkeeper.localcluster import free_port
from tests.helpers import run_cli


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def flow_run(run_id):  # noqa: ANN201
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def runs_named(text: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=text)))


def artifacts_of(run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))


def run_log(run_id) -> list[str]:
    from tests.test_restore_confirm import run_log as read

    return read(run_id)


def assert_no_traceback(lines: list[str] | str) -> None:
    text = "\n".join(lines) if isinstance(lines, list) else lines
    assert "Traceback" not in text and 'File "' not in text, text[-3000:]


def test_backup_and_verify_runs_tell_their_story(conn, repo) -> None:
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.verify import verify
    from tests.test_backup import save_blocks

    db_block, repo_block = save_blocks(conn, repo)
    state = backup(connection_block=db_block, repository_block=repo_block, return_state=True)
    m = state.result()
    run = flow_run(state.state_details.flow_run_id)
    assert run.name == f"backup {conn.database} {today()}"
    assert {f"db:{conn.database}", "backup"} <= set(run.tags)
    assert run.state.message == f"{m.backup_id} of {conn.database}: " + state.message.split(": ", 1)[1]
    assert "rows" in run.state.message and m.status in run.state.message
    [summary] = [a for a in artifacts_of(run.id) if a.key == f"backup-{conn.database.replace('_', '-')}"]
    assert summary.task_run_id is None  # the flow run's own artifact, not a task's
    assert "| | |" not in summary.data and f"**Backup id**: `{m.backup_id}`" in summary.data

    checked = verify(backup=m.backup_id, restore=False, connection_block=db_block, repository_block=repo_block,
                     return_state=True)
    run = flow_run(checked.state_details.flow_run_id)
    assert run.name == f"verify {conn.database} {m.backup_id}"
    assert {f"db:{conn.database}", "verify"} <= set(run.tags)
    assert run.state.message.startswith(f"{m.backup_id} of {conn.database}: Backup file is intact")
    artifacts = artifacts_of(run.id)
    assert artifacts and all(a.task_run_id is None for a in artifacts)


def test_expected_errors_are_one_line_with_their_exit_code(pg_env) -> None:
    # Not found: the terminal's last line says so, the run's log has no traceback.
    missing = run_cli("verify", "backup_19990101_000000", env=pg_env)
    assert missing.returncode == ExitCode.NOT_FOUND, missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("pgkeeper: error: backup backup_19990101_000000 not")
    assert_no_traceback(missing.stdout + missing.stderr)
    [run] = runs_named("verify backup_19990101_000000")
    assert run.state.is_failed()
    log = run_log(run.id)
    assert any("not found" in line for line in log)
    assert_no_traceback(log)

    # Connection: nothing listens on that port.
    unreachable = run_cli("backup", "--port", str(free_port()), env=pg_env)
    assert unreachable.returncode == ExitCode.CONNECTION, unreachable.stderr
    assert unreachable.stderr.strip().splitlines()[-1].startswith("pgkeeper: error: cannot connect")
    assert_no_traceback(unreachable.stdout + unreachable.stderr)
    [run] = [r for r in runs_named(f"backup {pg_env['POSTGRES_DB']}") if r.state.is_failed()]
    log = run_log(run.id)
    assert any("server unreachable" in line for line in log)
    assert_no_traceback(log)

    # Bad input: a backup name with a path in it.
    bad = run_cli("restore", "../etc", "--yes", env=pg_env)
    assert bad.returncode == ExitCode.BAD_INPUT and len(bad.stderr.strip().splitlines()) == 1, bad.stderr

"""A command that ran a flow leaves quickly (pgkeeper.cli.main.leave: Prefect's log and event
services drained together, then `os._exit`) and loses nothing on the way out: once the process
has exited, the run's final state and every run log line it printed are on the API.

Read right after the process ends, never waited for: a line still in flight at exit would be
a line lost."""

from __future__ import annotations

import re

from tests.helpers import run_cli

# Prefect's console format: "HH:MM:SS.mmm | LEVEL   | Flow run 'name' - message".
RUN_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| \w+\s*\| (?:Flow|Task) run '[^']*' - (.*)$")


def test_the_final_state_and_every_logged_line_are_on_the_api_when_the_command_has_exited(pg_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    done = run_cli("backup", env={**pg_env, "PREFECT_LOGGING_LEVEL": "INFO"})
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", done.stderr).group(1)
    # "View at <url>" is Prefect's console-only line (send_to_api=False); every other one is the run's.
    printed = [m.group(1) for m in map(RUN_LINE.match, done.stderr.splitlines())
               if m and not m.group(1).startswith("View at ")]
    assert any(line.startswith("Finished in state Completed") for line in printed)

    with get_client(sync_client=True) as client:  # no waiting: the process has exited
        run = client.read_flow_run(run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.state.message and run.state.message in done.stdout  # the final line the UI shows
    on_api = [log.message for log in logs]
    # Multi-line messages print their first line after the prefix; the API holds the whole message.
    missing = [line for line in printed if not any(message.startswith(line) for message in on_api)]
    assert not missing, missing
    assert len(on_api) >= len(printed)

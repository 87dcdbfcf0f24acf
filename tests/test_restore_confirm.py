"""The confirmation form: the run pauses in the Prefect API and nothing happens until it is
answered correctly. Driven through the real harness API with resume_flow_run, as the UI does."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.helpers import table_fingerprints
from tests.test_notify import saved_mail  # noqa: F401 (fixture)
from tests.test_restore import change_data, cleanup_copies, env, leftovers, old_copies  # noqa: F401


def paused_run(stop: threading.Event, timeout: float = 120):
    """The one paused flow run of this session's API, once its form is saved."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.input.actions import read_flow_run_input

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not stop.is_set():
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            for run in runs:
                description = read_flow_run_input("paused-1-description", flow_run_id=run.id)
                if description:
                    return run, description
            time.sleep(0.2)
    return None, None


def read_run(flow_run_id):  # noqa: ANN201
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def run_log(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]


def wait_for_log(flow_run_id, text: str, timeout: float = 30) -> bool:
    """Run logs reach the API in batches, a moment after the run ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in run_log(flow_run_id)):
            return True
        time.sleep(0.5)
    return False


def restore_answering(answer: dict[str, Any] | None, **params: Any):
    """Run the restore flow here; a second thread plays the operator at the paused form."""
    from prefect.flow_runs import resume_flow_run

    from pgkeeper.flows.restore import restore

    seen: dict[str, Any] = {}
    stop = threading.Event()

    def operator() -> None:
        run, description = paused_run(stop)
        seen["description"] = description
        if run is not None and answer is not None:
            resume_flow_run(run.id, run_input=answer)

    t = threading.Thread(target=operator, daemon=True)
    t.start()
    try:
        state = restore("latest", return_state=True, **params)
    finally:
        stop.set()
        t.join(30)
    return state, seen.get("description")


@pytest.fixture
def backed_up(pg, crm_db, env, repo):  # noqa: F811 (fixture from test_restore)
    """A backup of the CRM, then changes the restore would undo: (state at backup, state now)."""
    from pgkeeper.flows.backup import backup

    at_backup = table_fingerprints(pg.conninfo(crm_db))
    backup()
    change_data(pg, crm_db)
    return at_backup, table_fingerprints(pg.conninfo(crm_db))


def assert_nothing_happened(pg, crm_db, repo, now) -> None:
    from pgkeeper.catalog import list_backups

    assert table_fingerprints(pg.conninfo(crm_db)) == now
    assert old_copies(pg, crm_db) == [] and leftovers(pg, crm_db) == []
    assert [m.labels for m in list_backups(repo.local(), crm_db)] == [[]]  # no safety backup was made


def test_a_wrong_name_is_refused_and_nothing_happens(pg, crm_db, repo, backed_up, saved_mail):  # noqa: F811
    _, now = backed_up
    state, description = restore_answering({"confirm": True, "database_name": crm_db + "x"})
    assert description is not None
    assert state.is_cancelled()
    assert f"restore refused, database {crm_db} is unchanged" in state.message
    assert_one_line_log(state.state_details.flow_run_id, "restore refused")
    assert_nothing_happened(pg, crm_db, repo, now)
    # A notice, not a failure: the subject says nothing changed.
    assert [m["Subject"] for m in saved_mail] == [f"[pgkeeper] restore of {crm_db} not confirmed: nothing changed"]


def test_an_unticked_form_is_refused(pg, crm_db, repo, backed_up):
    _, now = backed_up
    state, _ = restore_answering({"confirm": False, "database_name": crm_db})
    assert state.is_cancelled() and "not confirmed" in state.message
    assert_nothing_happened(pg, crm_db, repo, now)


def test_the_form_describes_the_restore_and_a_correct_answer_proceeds(pg, crm_db, repo, backed_up,
                                                                      cleanup_copies, saved_mail):  # noqa: F811
    from pgkeeper.catalog import list_backups

    at_backup, now = backed_up
    state, description = restore_answering({"confirm": True, "database_name": crm_db})
    assert state.is_completed(), state.message
    for expected in (crm_db, "backup_", "Age", "Size", "Verification", "exists,", "pre-restore"):
        assert expected in description
    assert "| | |" not in description  # facts as a list: no empty header row, nothing clipped

    # The runs list: the restore and its safety backup say what they are.
    report = state.result()
    restore_run = read_run(state.state_details.flow_run_id)
    assert restore_run.name == f"restore {crm_db} ← {report.backup_id}"
    assert {f"db:{crm_db}", "restore"} <= set(restore_run.tags)
    assert restore_run.state.message.startswith(f"restored {report.backup_id} into {crm_db}: ")
    assert "RTO" in restore_run.state.message and report.old_copy in restore_run.state.message
    [safety] = [m for m in list_backups(repo.local(), crm_db) if "pre-restore" in m.labels]
    assert safety.backup_id == report.safety_backup_id

    # Mails: the safety backup labelled as such, then the restore's own.
    subjects = [m["Subject"] for m in saved_mail]
    assert subjects[0].startswith(f"[pgkeeper] safety backup (pre-restore) of {crm_db} OK: {safety.backup_id}")
    assert subjects[1].startswith(f"[pgkeeper] restore of {crm_db} OK: {report.backup_id}, RTO ")
    body = saved_mail[1].get_content()
    assert report.old_copy in body and safety.backup_id in body and "RTO:" in body
    assert all(m["Date"] and m["Message-ID"] for m in saved_mail)
    assert table_fingerprints(pg.conninfo(crm_db)) == at_backup
    [old] = old_copies(pg, crm_db)
    assert table_fingerprints(pg.conninfo(old)) == now
    report = state.result()
    assert report.waited_seconds > 0 and report.rto_seconds > 0


def test_no_answer_before_the_timeout_cancels_cleanly(pg, crm_db, repo, backed_up):
    _, now = backed_up
    state, description = restore_answering(None, confirm_timeout_seconds=4)
    assert description is not None  # it did pause with its form
    # Cancelled, not Failed (which the API makes of an expired pause): no failure mail goes out.
    wanted = f"no confirmation within 4 s: restore cancelled, database {crm_db} is unchanged"
    assert state.is_cancelled() and wanted in state.message, state
    assert_one_line_log(state.state_details.flow_run_id, wanted)
    assert_nothing_happened(pg, crm_db, repo, now)


def assert_one_line_log(flow_run_id, wanted: str) -> None:
    """The outcome is in the run's log, and nothing there is a traceback."""
    assert wait_for_log(flow_run_id, wanted)
    assert not [line for line in run_log(flow_run_id) if "Traceback" in line or "\n" in line.strip()]

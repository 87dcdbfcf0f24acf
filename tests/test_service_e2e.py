"""pgkeeper as a service, end to end: a real `prefect server start`, `pgkeeper setup` from the
environment, prefect.yaml deployed, a process worker, real SMTP.

A scheduled-style backup run completes with its artifact and sends the success mail; a run
that fails and a run whose process is killed each send exactly one failure mail (through the
automation), naming the flow and the run. Everything started here is stopped in `finally`,
the worker before the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgkeeper.localcluster import free_port
from tests.helpers import ROOT, api_request, run_cli, stop, wait_for  # noqa: F401 (stop: other e2e files import it from here)
from tests.prefect_template import seed_pgkeeper_server

SMTP_PASS = "smtp-Pw-" + uuid.uuid4().hex[:8]


def healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def service_env(pg, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The old scripts' variables for one CRM database and repository, for this module's tests."""
    from pgkeeper.sample_crm import create_crm
    from tests.conftest import PASSWORD
    from tests.helpers import create_database, drop_database

    name = "crm_" + uuid.uuid4().hex[:8]
    create_database(pg, name)
    create_crm(pg.conninfo(name), scale=0.3)
    try:
        yield {"POSTGRES_HOST": pg.host, "POSTGRES_PORT": str(pg.port), "POSTGRES_USER": "postgres",
               "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": name,
               "BACKUP_DIR": str(tmp_path_factory.mktemp("e2e-repo"))}
    finally:
        drop_database(pg, name)


@pytest.fixture(scope="module")
def module_smtp() -> Iterator[tuple[str, int, list]]:
    from aiosmtpd.controller import Controller

    from tests.conftest import _Inbox

    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.hostname, controller.port, inbox.messages
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def service(service_env, module_smtp) -> Iterator[tuple[str, dict[str, str], list]]:
    """A real Prefect server (started as a user does, `pgkeeper server start`, on a port that is
    not 4200) and a pgkeeper worker, set up from the old scripts' variables. Shared by this
    module's tests: a server start costs ~15-70 s."""
    host, smtp_port, messages = module_smtp
    home = Path(tempfile.mkdtemp(prefix="pgkeeper-e2e-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base_env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "PGKEEPER_HOME": str(home / "pgkeeper"),
                "PGKEEPER_SERVER_PORT": str(port), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    base_env.pop("PREFECT_API_URL", None)
    worker = None
    try:
        seed_pgkeeper_server(home / "pgkeeper")  # already migrated: no 116 migrations at start
        started = run_cli("server", "start", env=base_env, timeout=180)
        assert started.returncode == 0 and healthy(api), started.stdout + started.stderr
        # The server is locked (issue 13): this test's own HTTP calls carry its credential;
        # pgkeeper's commands below find it themselves.
        CREDENTIALS[api] = (home / "pgkeeper" / "server-auth").read_text().strip()
        env = {**base_env, **service_env, "PREFECT_API_URL": api, "ENABLE_EMAIL_ALERTS": "true",
               "ALERT_EMAIL": "dba@example.com", "SMTP_HOST": host, "SMTP_PORT": str(smtp_port),
               "SMTP_PASS": SMTP_PASS, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
        worker_log = open(home / "worker.log", "wb")  # noqa: SIM115
        # `pgkeeper serve`: what a user runs to work the schedules (a process worker for the pool),
        # started as soon as setup has made the pool, beside the rest of setup (fleet_world does the same).
        result, worker = setup_beside_worker(api, env, home, lambda: subprocess.Popen(
            [sys.executable, "-m", "pgkeeper.cli.main", "serve"], env=env, cwd=ROOT, stdout=worker_log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
        assert result.returncode == 0, result.stdout + result.stderr
        yield api, env, messages
        # Runs the tests set off finish first: a worker stopped mid-run waits for it. verify/daily
        # follows every completed backup, a moment later (an event, then the trigger): wait for
        # each backup's own verify to end, not only for what happens to be running now.
        wait_for(lambda: verifies_pending(api) == set(), 240, "the verify run of every completed backup")
        wait_for(lambda: not api_call(api, "POST", "/flow_runs/filter", {"flow_runs": {"state": {"type": {
            "any_": ["RUNNING", "PENDING"]}}}}), 240, "the runs in flight")
        # Ctrl-C stops serve cleanly, and its worker with it (after a run it picked up meanwhile, such as the
        # verify that the last backup set off).
        os.killpg(worker.pid, signal.SIGINT)
        assert worker.wait(240) == 0, (home / "worker.log").read_text()[-3000:]
        assert b"pgkeeper serving: worker for pool 'pgkeeper'" in (home / "worker.log").read_bytes()
    finally:
        if worker is not None:
            stop(worker)
        run_cli("server", "stop", env=base_env)
        shutil.rmtree(home, ignore_errors=True)


def pool_exists(api: str, pool: str = "pgkeeper") -> bool:
    import httpx

    try:
        api_call(api, "GET", f"/work_pools/{pool}")
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return False
        raise
    return True


def setup_beside_worker(api: str, env: dict[str, str], home: Path, start_worker: Callable[[], subprocess.Popen],
                        ) -> tuple[subprocess.CompletedProcess, subprocess.Popen | None]:
    """`pgkeeper setup`, and the worker started once setup has made its pool: the worker's seconds
    of imports overlap setup's deployments and automations instead of following them. The worker
    takes runs once there are deployments. Returns setup's outcome and the worker (None when setup
    failed before it made the pool)."""
    with open(home / "setup.out", "w+") as out, open(home / "setup.err", "w+") as err:
        setup = subprocess.Popen([sys.executable, "-m", "pgkeeper.cli.main", "setup"], env=env, cwd=ROOT,
                                 stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        worker = None
        try:
            wait_for(lambda: setup.poll() is not None or pool_exists(api), 300, "setup to create the work pool")
            if setup.poll() is None:
                worker = start_worker()
            if setup.wait(timeout=300) == 0 and worker is None:  # it finished between two looks
                worker = start_worker()
        except BaseException:
            if worker is not None:  # the caller never gets it: stop it here
                stop(worker)
            raise
        finally:
            stop(setup)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(setup.args, setup.returncode, out.read(), err.read()), worker


# The test talks to this server over plain HTTP (and a subprocess for the slot): a Prefect client
# in this process would keep pointing at the server after it is stopped and disturb later tests.
CREDENTIALS: dict[str, str] = {}  # API URL -> the locked server's auth string


def api_call(api: str, method: str, path: str, body: dict | None = None):  # noqa: ANN201
    # pgkeeper's own (locked) server wants its credential; a plain `prefect server start` none.
    return api_request(api, method, path, body, CREDENTIALS.get(api))


def start_run(api: str, deployment: str, parameters: dict | None = None) -> dict:
    dep = api_call(api, "GET", f"/deployments/name/{deployment}")
    return api_call(api, "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters or {}})


def read_run(api: str, run_id: str) -> dict:
    return api_call(api, "GET", f"/flow_runs/{run_id}")


def verifies_pending(api: str) -> set[str]:
    """Backups that completed and whose verify/daily run has not ended (pre-restore safety
    backups start none). A completed backup's message starts with its id."""
    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    backups = api_call(api, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["backup"]}}, "flow_runs": {
        "state": {"type": {"any_": ["COMPLETED"]}}}})
    wanted = {r["state"]["message"].split()[0] for r in backups if "pre-restore" not in r["tags"]}
    verifies = api_call(api, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["verify"]}}})
    return wanted - {r["parameters"].get("backup") for r in verifies if r["state"]["type"] in final}


def final_run(api: str, run_id: str, timeout: float = 180) -> dict:
    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    return wait_for(lambda: (r := read_run(api, run_id))["state"]["type"] in final and r, timeout, "the run to finish")


def mails_about(messages: list, run: dict) -> list:
    """Failure mails about this run: its name in the subject and its id in the body (runs of one
    deployment on one day share a name, by design: `backup crm 2026-11-30`)."""
    return [m for m in messages if run["name"] in m["Subject"] and str(run["id"]) in m.get_content()]


def test_service_end_to_end(service, service_env) -> None:
    from pgkeeper.slots import database_limit_name

    api, env, messages = service
    password = service_env["POSTGRES_PASSWORD"]

    # 1. The nightly backup, started by hand: Completed, with its artifact and a success mail.
    ok = final_run(api, start_run(api, "backup/daily")["id"])
    assert ok["state"]["type"] == "COMPLETED", ok["state"]["message"]
    artifacts = api_call(api, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [ok["id"]]}}})
    assert any(service_env["POSTGRES_DB"] in str(a["data"]) for a in artifacts)
    success = wait_for(lambda: [m for m in messages if "OK" in m["Subject"]], 30, "the success mail")
    assert len(success) == 1 and service_env["POSTGRES_DB"] in success[0]["Subject"]
    assert ok["name"].startswith(f"backup {service_env['POSTGRES_DB']} ")
    assert ok["state"]["message"].startswith("backup_")
    assert "Size:" in success[0].get_content() and ("KB" in success[0]["Subject"] or "MB" in success[0]["Subject"])

    # 2. A run that fails (nothing listens on that port): exactly one failure mail.
    failed = final_run(api, start_run(api, "backup/daily", {"port": free_port()})["id"])
    assert failed["state"]["type"] == "FAILED"
    mail = wait_for(lambda: mails_about(messages, failed), 60, "the failure mail")
    assert "backup" in mail[0]["Subject"] and "Failed" in mail[0]["Subject"]
    assert service_env["POSTGRES_DB"] in mail[0]["Subject"]  # the run's name carries the database
    body = mail[0].get_content()
    assert "server unreachable" in body
    assert "Step: preflight (failed)" in body
    assert f"Run: {api.removesuffix('/api')}/runs/flow-run/{failed['id']}" in body

    # 3. A run whose process is killed: it waits for the database's backup slot (held by another
    #    process here), gets SIGKILL, the worker reports it Crashed, and one failure mail goes out.
    server = f"{service_env['POSTGRES_HOST']}:{service_env['POSTGRES_PORT']}"
    slot = database_limit_name(service_env["POSTGRES_DB"], server)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom prefect.concurrency.sync import concurrency\n"
         f"with concurrency({slot!r}, strict=True):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        env={**env, "PREFECT_API_AUTH_STRING": CREDENTIALS[api]},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        doomed = start_run(api, "backup/daily")
        running = wait_for(lambda: (r := read_run(api, doomed["id"]))["state"]["type"] == "RUNNING"
                           and r["infrastructure_pid"] and r, 90, "the run to start")
        os.kill(int(str(running["infrastructure_pid"]).rsplit(":", 1)[-1]), signal.SIGKILL)
        crashed = final_run(api, doomed["id"], timeout=60)
    finally:
        holder.stdin.close()
        try:
            holder.wait(30)
        except subprocess.TimeoutExpired:
            stop(holder)
    assert crashed["state"]["type"] == "CRASHED"
    mail = wait_for(lambda: mails_about(messages, crashed), 60, "the crash mail")
    assert "backup" in mail[0]["Subject"] and "Crashed" in mail[0]["Subject"]

    # 4. A warning a run emits (low disk, anomaly, archive lag...) reaches the mailbox too.
    probe = ("from prefect import flow\nfrom pgkeeper.alerts import warn\n@flow(name='warning-probe')\n"
             "def probe():\n    warn('low-disk', 'the repository disk is 97% full', database='crm_probe')\n"
             "probe()\n")
    r = subprocess.run([sys.executable, "-c", probe], env={**env, "PREFECT_API_AUTH_STRING": CREDENTIALS[api]},
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    mail = wait_for(lambda: [m for m in messages if "warning (low-disk) on crm_probe" in m["Subject"]], 60,
                    "the warning mail")
    assert "the repository disk is 97% full" in mail[0].get_content()

    # 5. A restore nobody confirms in time: Cancelled, the database unchanged, a notice and no failure
    #    mail, and a run log without tracebacks (the engine's CancelledRun is one line too).
    db = service_env["POSTGRES_DB"]
    unanswered = final_run(api, start_run(api, "restore/on-demand", {"confirm_timeout_seconds": 3})["id"])
    assert unanswered["state"]["type"] == "CANCELLED", unanswered["state"]["message"]
    assert f"database {db} is unchanged" in unanswered["state"]["message"]
    assert unanswered["name"].startswith(f"restore {db} ← backup_")
    wait_for(lambda: [m for m in messages if f"restore of {db} not confirmed" in m["Subject"]], 30, "the notice")
    def logs_of(*run_ids: str) -> list[str]:
        body = {"logs": {"flow_run_id": {"any_": list(run_ids)}}}
        return [log["message"] for log in api_call(api, "POST", "/logs/filter", body)]

    # Run logs reach the API in batches, a moment after the run ends.
    lines = wait_for(lambda: (found := logs_of(unanswered["id"], failed["id"]))
                     and any(f"database {db} is unchanged" in line for line in found) and found, 30, "the run logs")
    text = "\n".join(lines)
    assert "Traceback" not in text and "Engine execution exited" not in text, text[-3000:]

    # Exactly one mail per failure, even after the automation had time to misbehave: 5 s after the
    # last of these runs ended (the notice and log waits above already used part of them).
    from datetime import datetime

    ended = max(datetime.fromisoformat(r["end_time"]).timestamp() if r.get("end_time") else time.time()
                for r in (failed, crashed, unanswered))
    time.sleep(max(0.0, ended + 5 - time.time()))
    assert not mails_about(messages, unanswered)  # a notice has its own subject, no failure mail
    assert len(mails_about(messages, failed)) == 1
    assert len(mails_about(messages, crashed)) == 1
    assert len([m for m in messages if "OK" in m["Subject"]]) == 1

    # Secrets given through the environment appear in no mail, log or artifact.
    logs = api_call(api, "POST", "/logs/filter",
                    {"logs": {"flow_run_id": {"any_": [ok["id"], failed["id"], crashed["id"]]}}})
    assert logs
    for secret in (password, SMTP_PASS):
        assert all(secret not in m.as_string() for m in messages)
        assert all(secret not in log["message"] for log in logs)
        assert all(secret not in str(a["data"]) for a in artifacts)


def ui_browser() -> str | None:
    """The system's Chromium when Playwright can drive it, else None."""
    import importlib.util

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    return chromium if chromium and importlib.util.find_spec("playwright") else None


@pytest.mark.skipif(ui_browser() is None, reason="no Chromium to look at the UI with: `apt-get install chromium` "
                    "(Debian's package; Playwright, from the test extras, drives it)")
def test_ui_shows_the_runs_and_the_restore_form(service, service_env) -> None:
    """The pages a user opens, in a headless Chromium: the runs list says what ran, and the
    restore form shows what will happen, on a server that is not on port 4200."""
    from playwright.sync_api import sync_playwright

    api, _env, _messages = service
    ui, db = api.removesuffix("/api"), service_env["POSTGRES_DB"]
    backups = api_call(api, "POST", "/flow_runs/filter", {"flow_runs": {"name": {"like_": f"backup {db}"},
                                                                        "state": {"type": {"any_": ["COMPLETED"]}}}})
    if not backups:  # run alone: the restore needs a backup
        assert final_run(api, start_run(api, "backup/daily")["id"])["state"]["type"] == "COMPLETED"
    paused = start_run(api, "restore/on-demand", {"confirm_timeout_seconds": 600})
    wait_for(lambda: read_run(api, paused["id"])["state"]["type"] == "PAUSED", 120, "the restore to ask")
    name = read_run(api, paused["id"])["name"]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=ui_browser(), args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                # The server is locked: the UI asks for the auth string first, as the README says.
                page.goto(f"{ui}/runs", timeout=60_000)
                page.locator("input[type=password]").fill(CREDENTIALS[api], timeout=60_000)
                page.get_by_role("button", name="Login").click()
                page.get_by_text(name).first.wait_for(timeout=60_000)
                text = page.inner_text("body")
                assert "Can't connect" not in text
                assert f"backup {db} " in text  # the backup runs are named after their database

                page.goto(f"{ui}/runs/flow-run/{paused['id']}", timeout=60_000)
                page.get_by_role("button", name="Resume").first.click(timeout=60_000)
                heading = page.get_by_text(f"Replace database {db} with backup")
                heading.first.wait_for(timeout=30_000)
                form = page.inner_text("body")
                for expected in ("Target:", "Backup:", "Age:", "Size:", "Verification:", "pre-restore"):
                    assert expected in form, form[-2000:]
                # Nothing clipped: no element of the description is wider than what shows it.
                clipped = page.evaluate("""() => [...document.querySelectorAll('li, td, p')]
                    .filter(e => e.innerText.includes('backup_') && e.scrollWidth > e.clientWidth + 1)
                    .map(e => e.innerText)""")
                assert clipped == []
            finally:
                browser.close()
    finally:
        api_call(api, "POST", f"/flow_runs/{paused['id']}/resume",
                 {"run_input": {"confirm": False, "database_name": ""}})
    refused = final_run(api, paused["id"])
    assert refused["state"]["type"] == "CANCELLED" and f"database {db} is unchanged" in refused["state"]["message"]

"""No silent failures, against one real `prefect server start` shared by this file's tests.

`pgkeeper setup` from the environment (mail through aiosmtpd, a webhook channel received by a
local HTTP server), a process worker, then: a failed command-line backup is mailed and posted;
a command-line backup's completion starts the verify deployment with its backup id and sends
its figures to every channel; a database nobody backs up is reported when its window passes;
a stopped worker is reported. Alert windows are seconds here (BACKUP_ALERT_HOURS & co. take
decimals) and the server's foreman checks worker heartbeats every 2 s instead of 15, its proactive
triggers are evaluated every second instead of every 5 s.
Everything started here is stopped in `finally`, the worker before the server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pgkeeper.localcluster import free_port
from tests.helpers import ROOT, run_cli
from tests.prefect_template import seed_prefect_home
from tests.test_service_e2e import (
    api_call,
    final_run,
    healthy,
    mails_about,
    module_smtp,
    setup_beside_worker,
    stop,
    wait_for,
)

__all__ = ["module_smtp"]  # the shared aiosmtpd fixture, module-scoped

SMTP_PASS = "smtp-Pw-" + uuid.uuid4().hex[:8]
# The backup-absence window, seconds: Prefect's minimum for a proactive trigger is 10 s. It was
# 40 s, which test_database_nobody_backs_up_is_reported waited out on an idle machine (the tests
# before it take ~20 s). The backed-up database's own absence mail may now go out too, before its
# first backup completes; no test counts it (each looks for its own subject).
WINDOW = 15
# The no-worker window, seconds (was 15): the minimum too. With the absence test no longer waiting
# out 40 s, the stopped-worker test waits for this window after the pool goes not-ready.
WORKER_WINDOW = 10
HOOK_TOKEN = "hook-" + uuid.uuid4().hex[:8]


class _Receiver(BaseHTTPRequestHandler):
    posts: list[dict]

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.posts.append({"path": self.path, "json": json.loads(body or b"null")})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, list[dict]]]:
    """A webhook receiver on loopback (what ALERT_WEBHOOK_URL points at): its URL, the posts."""
    posts: list[dict] = []
    handler = type("Receiver", (_Receiver,), {"posts": posts})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook/{HOOK_TOKEN}", posts
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Ops:
    api: str
    env: dict[str, str]
    mails: list
    posts: list[dict]
    db: str
    ghost: str
    worker: subprocess.Popen
    worker_stopped: float = 0.0


@pytest.fixture(scope="module")
def ops(pg, module_smtp, receiver) -> Iterator[Ops]:
    from pgkeeper.sample_crm import create_crm
    from tests.conftest import PASSWORD
    from tests.helpers import create_database, drop_database

    host, smtp_port, mails = module_smtp
    hook_url, posts = receiver
    db, ghost = "crm_" + uuid.uuid4().hex[:8], "ghost_" + uuid.uuid4().hex[:6]
    create_database(pg, db)
    create_crm(pg.conninfo(db), scale=0.1)
    home = Path(tempfile.mkdtemp(prefix="pgkeeper-alerting-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    quiet = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    server_env = {**os.environ, **quiet, "PREFECT_HOME": str(home / "server"), "PREFECT_UI_ENABLED": "false",
                  "PREFECT_UI_URL": api.removesuffix("/api"),  # run links in the mails
                  # The foreman marks a pool not ready once its worker missed 3 heartbeats: check often.
                  "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "2",
                  # The absence alerts (the ghost database, the stopped worker) are proactive triggers:
                  # evaluated every second rather than Prefect's 5 s, so a test waits for the window
                  # itself, not up to 5 s more. ISO 8601: a bare number is refused.
                  "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": "PT1S"}
    server_env.pop("PREFECT_API_URL", None)
    server = worker = None
    try:
        seed_prefect_home(home / "server")  # already migrated: no 116 migrations at start
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=server_env, stdout=open(home / "server.log", "wb"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        began = time.monotonic()
        wait_for(lambda: healthy(api) or server.poll() is not None, 180, "the Prefect server")
        print(f"prefect server start {time.monotonic() - began:.0f} s")
        assert server.poll() is None, (home / "server.log").read_text()[-3000:]
        env = {**os.environ, **quiet, "PREFECT_HOME": str(home / "client"), "PREFECT_API_URL": api,
               "POSTGRES_HOST": pg.host, "POSTGRES_PORT": str(pg.port), "POSTGRES_USER": "postgres",
               "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": db, "BACKUP_DIR": str(home / "repo"),
               "ENABLE_EMAIL_ALERTS": "true", "ALERT_EMAIL": "dba@example.com", "SMTP_HOST": host,
               "SMTP_PORT": str(smtp_port), "SMTP_PASS": SMTP_PASS, "ALERT_WEBHOOK_URL": hook_url,
               "PGKEEPER_DATABASES": f"{db},{ghost}", "BACKUP_ALERT_HOURS": str(WINDOW / 3600),
               "WORKER_ALERT_MINUTES": str(WORKER_WINDOW / 60)}
        started = time.monotonic()
        # The worker starts once setup has made the pool, beside the rest of setup.
        result, worker = setup_beside_worker(api, env, home, lambda: subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "pgkeeper", "--type", "process"],
            env={**env, "PREFECT_WORKER_HEARTBEAT_SECONDS": "2", "PREFECT_WORKER_QUERY_SECONDS": "1",
                 "PREFECT_WORKER_PREFETCH_SECONDS": "5"},
            cwd=ROOT, stdout=open(home / "worker.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            stdin=subprocess.DEVNULL, start_new_session=True))
        assert result.returncode == 0, result.stdout + result.stderr
        print(f"pgkeeper setup {time.monotonic() - started:.0f} s")
        yield Ops(api, env, mails, posts, db, ghost, worker)
    finally:
        if worker is not None:
            stop(worker)
        if server is not None:
            stop(server)
        shutil.rmtree(home, ignore_errors=True)
        drop_database(pg, db)


def runs_of(api: str, flow: str, name_like: str = "") -> list[dict]:
    body: dict = {"flows": {"name": {"any_": [flow]}}, "sort": "START_TIME_DESC"}
    if name_like:
        body["flow_runs"] = {"name": {"like_": name_like}}
    return api_call(api, "POST", "/flow_runs/filter", body)


def events_named(api: str, name: str) -> list[dict]:
    return api_call(api, "POST", "/events/filter", {"filter": {"event": {"name": [name]}}, "limit": 50})["events"]


def posts_about(posts: list[dict], text: str) -> list[dict]:
    return [p for p in posts if text in (p["json"] or {}).get("subject", "")]


def test_completed_backup_starts_verify_with_its_id_and_notifies_every_channel(ops: Ops) -> None:
    from pgkeeper.catalog import resolve_backup
    from pgkeeper.storage.local import LocalStorage

    result = run_cli("backup", env=ops.env)
    assert result.returncode == 0, result.stdout + result.stderr
    backup_id = result.stdout.split()[1]
    m = resolve_backup(LocalStorage(Path(ops.env["BACKUP_DIR"])), backup_id)

    # The success message: from the automation on pgkeeper.backup.completed, on both channels.
    subject = f"backup of {ops.db} OK: {backup_id}"
    mail = wait_for(lambda: [x for x in ops.mails if subject in x["Subject"]], 60, "the success mail")
    assert len(mail) == 1  # the flow did not mail too
    assert "Size:" in mail[0].get_content() and "Duration:" in mail[0].get_content()
    post = wait_for(lambda: posts_about(ops.posts, subject), 30, "the success webhook")
    assert "RTO:" in post[0]["json"]["body"]

    # The event carries the figures (stored by the server's event persister, a moment after triggers saw it).
    event = wait_for(lambda: [e for e in events_named(ops.api, "pgkeeper.backup.completed")
                              if e["payload"]["backup_id"] == backup_id], 30, "the stored event")[0]
    figures = event["payload"]
    assert event["resource"]["prefect.resource.id"] == f"pgkeeper.database.{ops.db}"
    assert (figures["size_bytes"], figures["raw_size_bytes"], figures["rows"]) == (
        m.size, m.raw_size, sum(m.tables.values()))
    assert figures["duration_seconds"] == pytest.approx(m.duration_seconds, abs=0.01)

    # The verify deployment ran for exactly this backup, started by the event.
    verify = wait_for(lambda: [r for r in runs_of(ops.api, "verify") if r["parameters"].get("backup") == backup_id],
                      60, "the verify run")[0]
    assert verify["parameters"]["database"] == ops.db and verify["deployment_id"]
    done = final_run(ops.api, verify["id"], timeout=180)
    assert done["state"]["type"] == "COMPLETED", done["state"]["message"]
    assert backup_id in done["state"]["message"]
    verified = wait_for(lambda: [e for e in events_named(ops.api, "pgkeeper.backup.verified")
                                 if e["payload"]["backup_id"] == backup_id], 30, "the verified event")
    assert verified[0]["payload"]["method"] == "quick"

    # The catalog artifact: one key, newest version from the verify run, showing the check.
    versions = api_call(ops.api, "POST", "/artifacts/filter", {"artifacts": {"key": {"any_": ["pgkeeper-catalog"]}}})
    assert len(versions) >= 2  # the backup's, then the verify's
    latest = api_call(ops.api, "GET", "/artifacts/pgkeeper-catalog/latest")
    rows = json.loads(latest["data"]) if isinstance(latest["data"], str) else latest["data"]
    assert rows[0]["backup"] == backup_id and rows[0]["status"] == "checked"

    # The worker's last job is done: stop it now, so the no-worker alert counts down during the next tests.
    wait_for(lambda: api_call(ops.api, "GET", "/work_pools/pgkeeper")["status"] == "READY", 30, "a ready pool")
    stop(ops.worker)
    ops.worker_stopped = time.monotonic()


def test_weekly_report_goes_to_every_channel(ops: Ops) -> None:
    """The report flow emits its event; setup's report automation sends it to mail and webhook."""
    script = "from pgkeeper.flows.weekly_report import weekly_report; print('SUBJECT', weekly_report())"
    result = subprocess.run([sys.executable, "-c", script], env=ops.env, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    subject = [ln for ln in result.stdout.splitlines() if ln.startswith("SUBJECT ")][-1].removeprefix("SUBJECT ")
    assert subject.startswith("weekly report ")
    mail = wait_for(lambda: [x for x in ops.mails if subject in x["Subject"]], 60, "the weekly report mail")
    assert len(mail) == 1 and ops.db in mail[0].get_content()
    post = wait_for(lambda: posts_about(ops.posts, subject), 30, "the weekly report webhook")
    assert ops.db in post[0]["json"]["body"]


def test_failed_command_line_backup_is_mailed_and_posted(ops: Ops) -> None:
    result = run_cli("backup", "--port", str(free_port()), env=ops.env)
    assert result.returncode == 4, result.stdout + result.stderr  # the server is unreachable
    failed = wait_for(lambda: [r for r in runs_of(ops.api, "backup", ops.db) if r["state"]["type"] == "FAILED"],
                      30, "the failed run")[0]
    assert "pgkeeper" in failed["tags"]  # what the failure automation matches, without a deployment
    mail = wait_for(lambda: mails_about(ops.mails, failed), 60, "the failure mail")
    assert "Failed" in mail[0]["Subject"] and ops.db in mail[0]["Subject"]
    assert "server unreachable" in mail[0].get_content()
    post = wait_for(lambda: posts_about(ops.posts, failed["name"]), 30, "the failure webhook")
    assert post[0]["path"].endswith(HOOK_TOKEN) and post[0]["json"]["source"] == "pgkeeper"
    assert "Failed" in post[0]["json"]["subject"] and str(failed["id"]) in post[0]["json"]["body"]


def test_database_nobody_backs_up_is_reported(ops: Ops) -> None:
    subject = f"no backup of {ops.ghost}"
    mail = wait_for(lambda: [x for x in ops.mails if subject in x["Subject"]], 120, "the absence mail")
    from datetime import datetime
    from email.utils import parsedate_to_datetime

    automation = api_call(ops.api, "POST", "/automations/filter",
                          {"automations": {"name": {"any_": [f"pgkeeper: absence: {subject}"]}}})[0]
    created = datetime.fromisoformat(automation["created"]).timestamp()
    waited = parsedate_to_datetime(mail[0]["Date"]).timestamp() - created
    assert "Nothing failed: nothing ran" in mail[0].get_content()
    assert posts_about(ops.posts, subject)
    assert not runs_of(ops.api, "backup", ops.ghost)  # no run, no failure: only the silence
    print(f"absence mail sent {waited:.0f} s after its automation was created (window {WINDOW} s)")


def test_metrics_endpoint_matches_the_repository(ops: Ops, pg) -> None:
    """`pgkeeper metrics` scraped over HTTP, parsed as Prometheus parses it, against the manifests.
    Runs after the chain above: the repository holds its backup, checked by the triggered verify."""
    import httpx
    import psycopg
    from prometheus_client.parser import text_string_to_metric_families

    from pgkeeper.catalog import list_backups
    from pgkeeper.storage.local import LocalStorage

    port = free_port()
    # No PREFECT_API_URL: the endpoint needs only the repository and the database.
    env = {k: v for k, v in ops.env.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "pgkeeper.cli.main", "metrics", "--backup-dir",
                             ops.env["BACKUP_DIR"], "--listen", f"127.0.0.1:{port}"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert "pgkeeper metrics: http://" in proc.stdout.readline()
        started = time.monotonic()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        scrape = time.monotonic() - started
    finally:
        stop(proc)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    backups = list_backups(LocalStorage(Path(ops.env["BACKUP_DIR"])), ops.db)
    newest, key = backups[-1], {"database": ops.db, "kind": "logical"}
    assert value("pgkeeper_repository_up", repository=LocalStorage(Path(ops.env["BACKUP_DIR"])).describe()) == 1
    assert value("pgkeeper_backup_count", **key) == len(backups)
    assert value("pgkeeper_backup_last_repo_size_bytes", **key) == newest.size
    assert value("pgkeeper_backup_last_size_bytes", **key) == newest.raw_size
    assert value("pgkeeper_backup_last_duration_seconds", **key) == pytest.approx(newest.duration_seconds)
    assert abs(value("pgkeeper_backup_since_last_completion_seconds", **key) - newest.age_seconds()) < 60
    assert value("pgkeeper_backup_last_verification_ok", **key) == 1  # the triggered quick verify
    assert value("pgkeeper_backup_since_last_verification_seconds", database=ops.db, method="quick") < 600
    assert value("pgkeeper_archiver_up", database=ops.db) == 1
    with psycopg.connect(pg.conninfo()) as c:
        mode, archived = c.execute("SELECT current_setting('archive_mode'), archived_count FROM pg_stat_archiver"
                                   ).fetchone()
    assert value("pgkeeper_wal_archive_enabled", database=ops.db) == (mode in ("on", "always"))
    assert value("pgkeeper_wal_archived_count", database=ops.db) <= archived  # read just before
    assert value("pgkeeper_wal_archive_status", database=ops.db) in (0, 1)
    print(f"metrics scrape {scrape * 1000:.0f} ms, {len(samples)} samples")

    # The shipped dashboard graphs only metrics the endpoint defines.
    import re

    dashboard = (ROOT / "docs" / "grafana-dashboard.json").read_text()
    defined = set(re.findall(r'"(pgkeeper_[a-z_]+)"', (ROOT / "pgkeeper" / "metrics.py").read_text()))
    assert set(re.findall(r"pgkeeper_[a-z_]+", dashboard)) - {"pgkeeper_"} <= defined
    assert {f.name for f in text_string_to_metric_families(text)} <= defined


def test_failed_verify_is_reported_to_sentry(tmp_path, monkeypatch) -> None:
    """Sentry hears of every flow now, not only backups (here: the session's test API, no server)."""
    from pgkeeper.flows.verify import verify
    from tests.test_notify import _Catcher

    catcher = _Catcher()
    monkeypatch.setenv("SENTRY_DSN", catcher.dsn)
    try:
        state = verify(backup="backup_20200101_000000", database="nothere", restore=False,
                       backup_dir=str(tmp_path / "empty"), connection_block=None, repository_block=None,
                       return_state=True)
        assert state.is_failed()
    finally:
        import sentry_sdk

        sentry_sdk.get_client().close(timeout=5)  # leave no client (or retries) behind
        sentry_sdk.init(dsn=None)
        catcher.stop()
    events = [json.loads(line) for body in catcher.bodies for line in body.splitlines()[1:]
              if line.startswith(b"{") and b'"level"' in line]
    assert len(events) == 1 and events[0]["tags"]["flow"] == "verify"
    assert "backup_20200101_000000" in events[0]["message"]


def test_stopped_worker_is_reported(ops: Ops) -> None:
    assert ops.worker_stopped, "the chain test stops the worker once its verify ran"
    subject = "no healthy worker for pool pgkeeper"
    mail = wait_for(lambda: [x for x in ops.mails if subject in x["Subject"]], 120, "the worker mail")
    assert "pgkeeper serve" in mail[0].get_content()
    print(f"worker mail {time.monotonic() - ops.worker_stopped:.0f} s after the worker stopped "
          f"(window {WORKER_WINDOW} s)")


def test_recoverability_window_and_gap_metrics(tmp_path) -> None:
    """The WAL half of the metrics, from base backup manifests in a real local repository and an
    archive listing (names and archive times, as the continuity walk reads them): no server."""
    from datetime import UTC, datetime, timedelta

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pgkeeper.manifest import Manifest
    from pgkeeper.metrics import RepositoryCollector, window_from
    from pgkeeper.storage.local import LocalStorage
    from pgkeeper.wal.naming import segment_name

    t0 = datetime(2026, 11, 29, tzinfo=UTC)
    storage = LocalStorage(tmp_path / "repo")
    storage.ensure_writable()
    for n, (backup_id, lsn) in enumerate([("backup_20261129_000000", "0/3000028"), ("backup_20261129_060000",
                                                                                   "0/A000028")]):
        m = Manifest(backup_id=backup_id, kind="physical", database="crm", server_version="15", tool_version="t",
                     started_at=t0 + timedelta(hours=6 * n), finished_at=t0 + timedelta(hours=6 * n, minutes=1),
                     compression="zstd", size=1000, files=[], start_lsn=lsn, timeline=1, wal_segment_size=16 << 20)
        storage.begin_backup(backup_id)
        storage.finish_backup(backup_id, m.to_bytes())
    last = (t0 + timedelta(hours=12)).timestamp()
    archive = {segment_name(1, n): last - (20 - n) for n in range(3, 21)}

    def scrape(names: dict[str, float]) -> dict[str, float]:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RepositoryCollector(storage, "crm", wal=lambda ms: window_from(ms, names, {})))
        text = generate_latest(registry).decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.labels.get("database") == "crm"}

    whole = scrape(archive)
    assert whole["pgkeeper_wal_archive_gap"] == 0
    # From the oldest base backup's consistent point to the newest archived segment's time.
    assert whole["pgkeeper_recoverability_window_seconds"] == last - (t0 + timedelta(minutes=1)).timestamp()
    assert whole["pgkeeper_backup_count"] == 2
    del archive[segment_name(1, 12)]  # a segment the newer base backup needs
    assert scrape(archive)["pgkeeper_wal_archive_gap"] == 1


def test_channels_and_windows_from_the_environment() -> None:
    """What `pgkeeper setup` builds before saving anything: Prefect's own blocks for Slack and Teams
    (delivery needs their real hosts; the webhook channel above is delivered for real), and one
    clear line for a bad URL or window."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, MicrosoftTeamsWebhook, SlackWebhook

    from pgkeeper.deployments.alerting import check_alert_environment, window
    from pgkeeper.deployments.channels import channel_blocks
    from pgkeeper.errors import PgkeeperError

    env = {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/secret",
           "TEAMS_WEBHOOK_URL": "https://prod-00.westus.logic.azure.com:443/workflows/w1/triggers/manual/paths/invoke"
                                "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=s1",
           "ALERT_WEBHOOK_URL": "https://hc-ping.example/uuid"}
    built = {name: type(block) for _var, name, block in channel_blocks(env)}
    assert built == {"pgkeeper-slack": SlackWebhook, "pgkeeper-teams": MicrosoftTeamsWebhook,
                     "pgkeeper-webhook": CustomWebhookNotificationBlock}
    assert window({}, "BACKUP_ALERT_HOURS").total_seconds() == 26 * 3600
    for bad, line in [({"SLACK_WEBHOOK_URL": "hooks.slack.com/x"}, "SLACK_WEBHOOK_URL must be an http(s):// URL"),
                      ({"VERIFY_ALERT_DAYS": "soon"}, "VERIFY_ALERT_DAYS must be a number, got 'soon'")]:
        with pytest.raises(PgkeeperError) as err:
            check_alert_environment(bad)
        assert str(err.value) == line

"""`pgkeeper setup` from the old scripts' environment: what it creates, twice, and bad input."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers import run_cli, run_cli_here

SMTP_PASS = "smtp-Pw-" + uuid.uuid4().hex[:8]
AWS_SECRET = "aws-Secret-" + uuid.uuid4().hex[:8]
SENTRY_DSN = "http://publickey" + uuid.uuid4().hex[:6] + "@127.0.0.1:9/1"


@pytest.fixture(autouse=True)
def forget_default_blocks():
    """`pgkeeper setup` saves the default blocks (pgkeeper-db, ...) and automations in the session's
    API; other tests rely on their absence to fall back to the environment, so remove them afterwards."""
    yield
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for doc in client.read_block_documents():
            if doc.name in ("pgkeeper-db", "pgkeeper-repo", "pgkeeper-mail", "pgkeeper-sentry-dsn"):
                try:
                    client.delete_block_document(doc.id)
                except ObjectNotFound:
                    pass
        # Its automations too: a success automation left behind would take the success mail over
        # from later tests' backups (and fail, its mail block gone).
        for automation in client.read_automations():
            if automation.name.startswith("pgkeeper:"):
                client.delete_automation(automation.id)


@pytest.fixture
def setup_env(pg_env, smtp_server, s3_endpoint, s3_bucket) -> dict[str, str]:
    host, port, _ = smtp_server
    return {**pg_env, "ENABLE_EMAIL_ALERTS": "true", "ALERT_EMAIL": "dba@example.com, ops@example.com",
            "SMTP_HOST": host, "SMTP_PORT": str(port), "SMTP_USER": "pgkeeper", "SMTP_PASS": SMTP_PASS,
            "ENABLE_S3_UPLOAD": "true", "S3_BUCKET": s3_bucket, "S3_PREFIX": "crm-backups",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_ENDPOINT_URL": s3_endpoint,
            "RETENTION_DAYS": "14", "SENTRY_DSN": SENTRY_DSN, "PGKEEPER_TIMEZONE": "Europe/Paris",
            "PGKEEPER_HEARTBEAT_SECONDS": "40", "PGKEEPER_HEARTBEAT_GRACE_SECONDS": "100"}


def block_document(slug: str, name: str) -> dict:
    """The block as the API (and so the UI) shows it: secrets are not revealed."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(name, block_type_slug=slug, include_secrets=False)
    return doc.data


def test_setup_from_environment_then_again_changes_nothing(setup_env, pg_env) -> None:
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    from pgkeeper.deployments.setup import engine_command

    first = run_cli("setup", env=setup_env)
    assert first.returncode == 0, first.stderr
    out = first.stdout + first.stderr
    for secret in (pg_env["POSTGRES_PASSWORD"], SMTP_PASS, AWS_SECRET, SENTRY_DSN):
        assert secret not in out

    # Secrets given through the environment are secrets in the blocks.
    db = block_document("pgkeeper-postgres-connection", "pgkeeper-db")
    assert db["database"] == pg_env["POSTGRES_DB"] and db["port"] == int(pg_env["POSTGRES_PORT"])
    smtp = block_document("email-server-credentials", "pgkeeper-smtp")
    aws = block_document("aws-credentials", "pgkeeper-aws")
    sentry = block_document("secret", "pgkeeper-sentry-dsn")
    dumped = json.dumps([db, smtp, aws, sentry], default=str)
    for secret in (pg_env["POSTGRES_PASSWORD"], SMTP_PASS, AWS_SECRET, SENTRY_DSN):
        assert secret not in dumped
    assert db["password"].startswith("*") and smtp["password"].startswith("*")

    repo = block_document("pgkeeper-backup-repository", "pgkeeper-repo")
    assert repo["path"] == pg_env["BACKUP_DIR"] and repo["retention_days"] == 14
    mail = block_document("pgkeeper-mail-notification", "pgkeeper-mail")
    assert mail["recipients"] == ["dba@example.com", "ops@example.com"]

    with get_client(sync_client=True) as client:
        assert client.read_work_pool("pgkeeper").type == "process"
        daily = client.read_deployment_by_name("backup/daily")
        assert daily.tags == ["pgkeeper"] and daily.work_pool_name == "pgkeeper"
        assert daily.parameters == {"connection_block": "pgkeeper-db", "repository_block": "pgkeeper-repo"}
        assert daily.global_concurrency_limit is not None and daily.global_concurrency_limit.limit == 1
        schedule = daily.schedules[0].schedule
        assert schedule.cron == "0 2 * * *" and schedule.timezone == "Europe/Paris"
        # The runs' heartbeat interval reaches them through the pool's job variables.
        assert daily.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "40"
        # Runs start the engine directly, not through Prefect's workspace supervisor (a second start-up).
        assert daily.job_variables["command"] == engine_command()
        updated_before = daily.updated
        drill = client.read_deployment_by_name("verify/weekly-drill")
        assert drill.parameters["restore"] is True and drill.schedules[0].schedule.cron == "0 3 * * 0"
        assert client.read_deployment_by_name("restore/on-demand").schedules == []
        # No ENABLE_WAL_ARCHIVING: the WAL jobs exist but wait, paused.
        assert client.read_deployment_by_name("wal-ship/every-5-minutes").paused
        assert not daily.paused
    failure = Automation.read(name="pgkeeper: mail on failed run")
    expected = {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}
    assert expected <= failure.trigger.expect
    crash = Automation.read(name="pgkeeper: crash runs whose heartbeat stopped")
    assert crash.trigger.within.total_seconds() == 100 and "100 s" in crash.actions[0].message

    second = run_cli_here("setup", env=setup_env)
    assert second.returncode == 0, second.stderr
    assert "nothing to change" in second.stdout, second.stdout
    assert "created" not in second.stdout and "updated" not in second.stdout
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("backup/daily").updated == updated_before
    assert len(Automation.read(name="pgkeeper: mail on failed run").actions) == 1

    changed = run_cli_here("setup", env={**setup_env, "ALERT_EMAIL": "new@example.com"})
    assert changed.returncode == 0, changed.stderr
    assert "updated  block pgkeeper-mail" in changed.stdout
    assert block_document("pgkeeper-mail-notification", "pgkeeper-mail")["recipients"] == ["new@example.com"]


@pytest.mark.parametrize("missing", ["POSTGRES_PASSWORD", "BACKUP_DIR"])
def test_missing_required_variable_is_one_clear_line(pg_env, missing) -> None:
    env = {k: v for k, v in pg_env.items() if k != missing}
    result = run_cli("setup", env=env)
    assert result.returncode == 2  # bad input
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"pgkeeper: error: missing required environment variable: {missing} "
                     "(see `pgkeeper setup --help`)"]


def test_mail_alerts_need_their_variables(pg_env) -> None:
    result = run_cli("setup", env={**pg_env, "ENABLE_EMAIL_ALERTS": "true"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("pgkeeper: error: missing required environment variables: ALERT_EMAIL, "
                                     "SMTP_HOST (see `pgkeeper setup --help`)")


def test_heartbeat_settings_default_and_bad_values() -> None:
    from pgkeeper.errors import SetupError
    from pgkeeper.settings import heartbeat_settings

    assert heartbeat_settings({}) == (30, 90)
    assert heartbeat_settings({"PGKEEPER_HEARTBEAT_SECONDS": "30",
                               "PGKEEPER_HEARTBEAT_GRACE_SECONDS": "45"}) == (30, 45)
    for bad in ({"PGKEEPER_HEARTBEAT_SECONDS": "5"}, {"PGKEEPER_HEARTBEAT_GRACE_SECONDS": "35"},
                {"PGKEEPER_HEARTBEAT_GRACE_SECONDS": "soon"}):
        with pytest.raises(SetupError):
            heartbeat_settings(bad)


def test_a_grace_shorter_than_the_heartbeat_is_one_clear_line(pg_env) -> None:
    result = run_cli("setup", env={**pg_env, "PGKEEPER_HEARTBEAT_GRACE_SECONDS": "20"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("pgkeeper: error: PGKEEPER_HEARTBEAT_GRACE_SECONDS=20 must be at least "
                                     "PGKEEPER_HEARTBEAT_SECONDS + 10 (40): a live run would be crashed")

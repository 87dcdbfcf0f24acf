"""Secrets never leave: one sentinel planted in every secret (the database password, the AWS
secret key, the SMTP password, the local server's auth string), a backup, a restore and a
failing run, then a hunt through everything pgkeeper produced.

Real components only: a locked `pgkeeper server start`, the session's PostgreSQL cluster (a
role whose password carries the sentinel), moto over HTTP, aiosmtpd with STARTTLS and login,
and a local HTTP server standing in for Sentry. Everything is read back over the API, the
wire or the disk, and grepped for the sentinel.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from pgkeeper.localcluster import free_port
from tests.helpers import ROOT, create_database, drop_database
from tests.prefect_template import seed_pgkeeper_server
from tests.test_notify import _Catcher
from tests.test_smtp_tls import USER, Mailbox
from tests.tls_certs import make_certs

SENTINEL = "SNTL" + uuid.uuid4().hex[:12].upper()
SECRETS = {"POSTGRES_PASSWORD": f"{SENTINEL}-pg", "AWS_SECRET_ACCESS_KEY": f"{SENTINEL}-aws",
           "SMTP_PASS": f"{SENTINEL}-smtp", "auth": f"pgkeeper:{SENTINEL}-auth"}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgkeeper.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def world(pg, s3_endpoint) -> Iterator[dict]:
    """Server, database, bucket, mail server and Sentry catcher, each holding a sentinel secret;
    then the runs. Yields what the runs produced and where to read the rest."""
    import ssl

    import boto3
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from pgkeeper.sample_crm import create_crm

    home = Path(tempfile.mkdtemp(prefix="pgkeeper-sentinel-"))
    port = free_port()
    role, db = "sntl_" + uuid.uuid4().hex[:6], "crm_" + uuid.uuid4().hex[:8]
    bucket = "pgkeeper-sntl-" + uuid.uuid4().hex[:8]
    (home / "pgkeeper").mkdir(mode=0o700)
    # The server's credential, planted before its first start (pgkeeper keeps an existing one).
    (home / "pgkeeper" / "server-auth").write_text(SECRETS["auth"] + "\n")
    (home / "pgkeeper" / "server-auth").chmod(0o600)
    from pgkeeper import keys

    env = {**os.environ, "PGKEEPER_HOME": str(home / "pgkeeper"), "PREFECT_HOME": str(home / "prefect"),
           "PGKEEPER_SERVER_PORT": str(port), "PGKEEPER_KEYS_DIR": str(keys.keys_dir())}  # the session's key
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(name, None)

    certs = make_certs(home / "certs", ["127.0.0.1"], "smtp")
    box = Mailbox()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.cert, certs.key)

    def login(server, session, envelope, mechanism, auth_data):  # noqa: ANN001, ANN202
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == SECRETS["SMTP_PASS"].encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    smtp = Controller(box, hostname="127.0.0.1", port=free_port(), tls_context=tls, require_starttls=True,
                      authenticator=login)
    catcher = _Catcher()
    smtp.start()
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(SECRETS["POSTGRES_PASSWORD"])))
    create_database(pg, db)
    try:
        create_crm(pg.conninfo(db), scale=0.05)
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        run_env = {**env, "POSTGRES_HOST": pg.host, "POSTGRES_PORT": str(pg.port), "POSTGRES_USER": role,
                   "POSTGRES_PASSWORD": SECRETS["POSTGRES_PASSWORD"], "POSTGRES_DB": db,
                   "BACKUP_DIR": str(home / "repo"),
                   "S3_BUCKET": bucket, "ENABLE_S3_UPLOAD": "true", "AWS_ENDPOINT_URL_S3": s3_endpoint,
                   "AWS_ACCESS_KEY_ID": "sentinel-test", "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
                   "AWS_DEFAULT_REGION": "us-east-1",
                   "ENABLE_EMAIL_ALERTS": "true", "ALERT_EMAIL": "dba@example.com", "SMTP_HOST": "127.0.0.1",
                   "SMTP_PORT": str(smtp.port), "SMTP_USER": USER, "SMTP_PASS": SECRETS["SMTP_PASS"],
                   "SSL_CERT_FILE": str(certs.ca), "SENTRY_DSN": catcher.dsn}
        seed_pgkeeper_server(home / "pgkeeper")  # already migrated: no 116 migrations at start
        started = cli("server", "start", env=env)
        assert started.returncode == 0, started.stderr
        outputs = []
        for args, extra, ok in [
            (("backup",), {}, True),
            (("restore", "latest", "--into", db + "_copy"), {}, True),
            # A failing run: a wrong password (which carries the sentinel too) reported to Sentry.
            (("backup",), {"POSTGRES_PASSWORD": f"{SENTINEL}-wrong"}, False),
        ]:
            result = cli(*args, env={**run_env, **extra})
            assert (result.returncode == 0) == ok, result.stdout + result.stderr
            outputs.append(result.stdout + result.stderr)
        yield {"api": f"http://127.0.0.1:{port}/api", "outputs": outputs, "mails": box.received,
               "sentry": catcher.bodies, "home": home, "s3": (s3_endpoint, bucket)}
    finally:
        cli("server", "stop", env=env)
        smtp.stop()
        catcher.stop()
        for name in (db, db + "_copy"):
            drop_database(pg, name)
        with psycopg.connect(pg.conninfo(), autocommit=True) as c:
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        shutil.rmtree(home, ignore_errors=True)


def api(world: dict, method: str, path: str, body: dict | None = None):  # noqa: ANN201
    token = base64.b64encode(SECRETS["auth"].encode()).decode()
    response = httpx.request(method, f"{world['api']}{path}", json=body, timeout=30,
                             headers={"Authorization": f"Basic {token}"})
    response.raise_for_status()
    return response.json()


def everything(world: dict, path: str, body: dict) -> list:
    """All rows of a Prefect filter endpoint, page by page."""
    rows, offset = [], 0
    while True:
        page = api(world, "POST", path, {**body, "limit": 200, "offset": offset})
        rows += page
        if len(page) < 200:
            return rows
        offset += 200


def all_events(world: dict) -> list:
    page = api(world, "POST", "/events/filter",
               {"filter": {"occurred": {"since": "2020-01-01T00:00:00Z"}}, "limit": 50})
    events = list(page["events"])
    while page.get("next_page"):
        token = base64.b64encode(SECRETS["auth"].encode()).decode()
        page = httpx.get(page["next_page"], headers={"Authorization": f"Basic {token}"}, timeout=30).json()
        events += page["events"]
    return events


def assert_clean(what: str, text: str) -> None:
    if SENTINEL in text:
        at = text.index(SENTINEL)
        raise AssertionError(f"a secret leaked into {what}: ...{text[max(0, at - 200):at + 60]}...")


def test_logs_runs_artifacts_and_events_hold_no_secret(world) -> None:
    import json

    logs = everything(world, "/logs/filter", {})
    runs = everything(world, "/flow_runs/filter", {})
    tasks = everything(world, "/task_runs/filter", {})
    artifacts = everything(world, "/artifacts/filter", {})
    events = all_events(world)
    assert len(logs) > 20 and len(runs) >= 3 and len(artifacts) >= 2 and len(events) > 10
    assert any(r["state_type"] == "FAILED" for r in runs)  # the failing run is among them
    for what, rows in [("logs", logs), ("flow runs", runs), ("task runs", tasks), ("artifacts", artifacts),
                       ("events", events)]:
        assert_clean(what, json.dumps(rows))


def test_mails_output_and_files_hold_no_secret(world) -> None:
    import boto3

    mails = world["mails"]
    assert mails and all(m["tls"] and m["login"] == USER.encode() for m in mails)  # sent, over TLS
    for m in mails:
        assert_clean("a mail", m["data"].decode(errors="replace"))
    for i, out in enumerate(world["outputs"]):
        assert_clean(f"the output of run {i}", out)
    assert "password authentication failed" in world["outputs"][2]  # the exception text, one line
    # The repository (manifests, restore log, roles file: hashes, never passwords), the server's log.
    for path in [*Path(world["home"], "repo").rglob("*"), *Path(world["home"], "pgkeeper").rglob("*.log")]:
        if path.is_file():
            assert_clean(str(path), path.read_bytes().decode(errors="replace"))
    endpoint, bucket = world["s3"]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys
    for key in keys:
        assert_clean(f"s3://{bucket}/{key}", s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode(
            errors="replace"))


def test_sentry_events_hold_no_secret(world) -> None:
    bodies = b"".join(world["sentry"]).decode(errors="replace")
    assert '"level"' in bodies and "password authentication failed" in bodies  # the failure was reported
    assert_clean("a Sentry event", bodies)


def test_scrubbing_knows_every_secret(monkeypatch) -> None:
    """What the failure hook scrubs with: the blocks' secrets, the environment's, the auth string's
    file, and private keys by their form."""
    from prefect_aws import AwsCredentials, S3Bucket
    from pydantic import SecretStr

    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.redact import known_secrets, remember, scrub

    monkeypatch.setenv("PGKEEPER_SIGNING_KEY_PASSWORD", f"{SENTINEL}-env")
    conn = PostgresConnection(password=SecretStr(f"{SENTINEL}-block"))
    repo = BackupRepository(offsite=S3Bucket(bucket_name="b", credentials=AwsCredentials(
        aws_access_key_id="id", aws_secret_access_key=f"{SENTINEL}-s3", aws_session_token=f"{SENTINEL}-tok")))
    remember(f"{SENTINEL}-loaded-key")
    secrets = known_secrets(conn, repo)
    pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI" + SENTINEL + "\n-----END PRIVATE KEY-----"
    event = {"message": f"x {SENTINEL}-block y {SENTINEL}-s3 {SENTINEL}-tok {SENTINEL}-env",
             "extra": [{f"{SENTINEL}-loaded-key": pem}], "url": f"postgres://u:{SENTINEL}-block@h",
             "age": "AGE-SECRET-KEY-1QQQ" + SENTINEL, "n": 3,
             "header": "Basic " + base64.b64encode(f"{SENTINEL}-env".encode()).decode()}
    cleaned = scrub(event, secrets)
    assert cleaned["n"] == 3 and "**********" in cleaned["message"]
    assert_clean("a scrubbed event", repr(cleaned))
    assert scrub("nothing secret here", secrets) == "nothing secret here"

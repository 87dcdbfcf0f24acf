"""Mail: the success mail a backup sends, the notification block on a real SMTP server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from pgkeeper.blocks.notify import MailNotification
from pgkeeper.tasks.notify import DEFAULT_NOTIFICATION_BLOCK


def mail_block(host: str, port: int, recipients: list[str]) -> MailNotification:
    from prefect_email import EmailServerCredentials

    return MailNotification(
        credentials=EmailServerCredentials(smtp_server=host, smtp_port=port, smtp_type="INSECURE"),
        recipients=recipients, sender="pgkeeper@test.invalid")


@pytest.fixture
def saved_mail(smtp_server) -> Iterator[list]:
    """The pgkeeper-mail block pointing at the test SMTP server; removed afterwards."""
    host, port, messages = smtp_server
    mail_block(host, port, ["dba@example.com", "ops@example.com"]).save(DEFAULT_NOTIFICATION_BLOCK, overwrite=True)
    try:
        yield messages
    finally:
        MailNotification.delete(DEFAULT_NOTIFICATION_BLOCK)


def test_block_sends_plain_mail_to_all_recipients(smtp_server) -> None:
    host, port, messages = smtp_server
    block = mail_block(host, port, ["a@example.com", "b@example.com"])
    block.send("backup of crm OK", "all good\n")
    assert len(messages) == 1
    msg = messages[0]
    assert msg["Subject"] == "[pgkeeper] backup of crm OK"
    assert msg["To"] == "a@example.com, b@example.com"
    assert "all good" in msg.get_content()
    assert msg["Date"] and msg["Message-ID"].endswith("@test.invalid>")


def test_block_is_a_notification_block_prefect_can_find() -> None:
    from prefect.blocks.core import Block

    assert "notify" in MailNotification.get_block_capabilities()
    # What the server does with a stored block document: find the class by its slug.
    assert Block.get_block_class_from_key("pgkeeper-mail-notification") is MailNotification


def test_backup_sends_success_mail_with_figures(saved_mail, conn, repo, capfd) -> None:
    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.flows.backup import backup
    from pgkeeper.fmt import human_bytes

    suffix = uuid.uuid4().hex[:6]
    conn.save(f"mail-db-{suffix}")
    repo.save(f"mail-repo-{suffix}")
    try:
        m = backup(connection_block=f"mail-db-{suffix}", repository_block=f"mail-repo-{suffix}")
    finally:
        PostgresConnection.delete(f"mail-db-{suffix}")
        BackupRepository.delete(f"mail-repo-{suffix}")
    assert len(saved_mail) == 1
    msg = saved_mail[0]
    body = msg.get_content()
    assert m.database in msg["Subject"] and human_bytes(m.size) in msg["Subject"]
    assert m.backup_id in body
    for figure in ("Size:", "Ratio:", "Duration:", "Verification:", "RTO:"):
        assert figure in body
    assert human_bytes(m.size) in body
    password = conn.password.get_secret_value()
    assert password not in msg.as_string()
    assert password not in capfd.readouterr().out


def test_no_mail_block_means_no_mail_and_backup_still_works(smtp_server, conn, repo) -> None:
    from pgkeeper.flows.backup import backup

    _, _, messages = smtp_server
    conn.save("nomail-db", overwrite=True)
    repo.save("nomail-repo", overwrite=True)
    m = backup(connection_block="nomail-db", repository_block="nomail-repo")
    assert m.backup_id and messages == []


def test_unreachable_mail_server_does_not_fail_the_backup(conn, repo) -> None:
    from prefect_email import EmailServerCredentials

    from pgkeeper.flows.backup import backup
    from pgkeeper.localcluster import free_port

    MailNotification(credentials=EmailServerCredentials(smtp_server="127.0.0.1", smtp_port=free_port(),
                                                        smtp_type="INSECURE", password=SecretStr("x")),
                     recipients=["dba@example.com"]).save(DEFAULT_NOTIFICATION_BLOCK, overwrite=True)
    conn.save("deadmail-db", overwrite=True)
    repo.save("deadmail-repo", overwrite=True)
    try:
        m = backup(connection_block="deadmail-db", repository_block="deadmail-repo")
    finally:
        MailNotification.delete(DEFAULT_NOTIFICATION_BLOCK)
    assert m.status != "failed"


class _Catcher:
    """A local HTTP server standing in for Sentry: keeps every envelope posted to it."""

    def __init__(self) -> None:
        import gzip
        import http.server
        import threading

        from pgkeeper.localcluster import free_port

        bodies: list[bytes] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                bodies.append(data)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.bodies = bodies
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.dsn = f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_failed_backup_is_reported_to_sentry_without_secrets(conn, repo, monkeypatch) -> None:
    import json

    from pgkeeper.flows.backup import backup
    from pgkeeper.localcluster import free_port

    catcher = _Catcher()
    monkeypatch.setenv("SENTRY_DSN", catcher.dsn)
    conn.save("sentry-db", overwrite=True)
    repo.save("sentry-repo", overwrite=True)
    try:
        state = backup(connection_block="sentry-db", repository_block="sentry-repo", port=free_port(),
                       return_state=True)
        assert state.is_failed()
    finally:
        import sentry_sdk

        sentry_sdk.get_client().close(timeout=5)  # leave no client (or retries) behind
        # Without a DSN, init reads SENTRY_DSN: unset it first, or later tests' error logs go to a
        # catcher that is gone (through the default integrations this init installs).
        monkeypatch.delenv("SENTRY_DSN")
        sentry_sdk.init(dsn=None)
        catcher.stop()
    events = [json.loads(line) for body in catcher.bodies for line in body.splitlines()[1:]
              if line.startswith(b"{") and b'"level"' in line]
    assert len(events) == 1
    event = events[0]
    assert event["tags"]["flow"] == "backup" and event["tags"]["step"] == "preflight"
    assert event["tags"]["database"] == conn.database
    context = event["contexts"]["pgkeeper"]
    assert context["free_disk_bytes"] > 0 and "database_size_bytes" in context
    assert "server unreachable" in event["message"] or "server unreachable" in json.dumps(event)
    assert conn.password.get_secret_value() not in b"".join(catcher.bodies).decode(errors="replace")


def test_sentry_scrub_removes_the_password_everywhere() -> None:
    from pgkeeper.sentry import scrub

    event = {"message": "x pw123 y", "extra": [{"k": "pw123"}], "n": 3}
    assert scrub(event, ["pw123"]) == {"message": "x ********** y", "extra": [{"k": "**********"}], "n": 3}

"""Mail never carries the SMTP password in clear: real aiosmtpd servers on loopback, one that
offers no TLS and one that offers STARTTLS with a certificate from a throwaway CA."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import SecretStr

from pgkeeper.blocks.notify import MailNotification
from pgkeeper.localcluster import free_port
from tests.tls_certs import Certs, make_certs

USER, PASSWORD = "alerts", "smtp-pw-" + "9c1e77"


class Mailbox:
    """Keeps each message with whether it arrived encrypted and who logged in."""

    def __init__(self) -> None:
        self.received: list[dict] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802, ANN001, ANN201 (aiosmtpd's names)
        self.received.append({"tls": session.ssl is not None, "login": getattr(session.auth_data, "login", None),
                              "data": envelope.content})
        return "250 OK"


def check_login(server, session, envelope, mechanism, auth_data):  # noqa: ANN001, ANN201 (aiosmtpd's hook)
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == \
        (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@contextmanager
def smtp(certs: Certs | None) -> Iterator[tuple[int, Mailbox]]:
    """A server that accepts AUTH even in clear (so that only pgkeeper's own rule can refuse),
    offering STARTTLS when given certificates."""
    import ssl

    from aiosmtpd.controller import Controller

    box = Mailbox()
    tls = None
    if certs is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(certs.cert, certs.key)
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), tls_context=tls, require_starttls=False,
                            authenticator=check_login, auth_require_tls=False)
    controller.start()
    try:
        yield controller.port, box
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    folder = Path(tempfile.mkdtemp(prefix="pgkeeper-smtp-tls-"))
    try:
        yield make_certs(folder, ["127.0.0.1"], "smtp")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def block(port: int, login: bool, **fields) -> MailNotification:  # noqa: ANN003
    from prefect_email import EmailServerCredentials

    # Port 2525: INSECURE, the type the old scripts' variables give any port but 465/587.
    credentials = EmailServerCredentials(smtp_server="127.0.0.1", smtp_port=port, smtp_type="INSECURE",
                                         username=USER if login else None,
                                         password=SecretStr(PASSWORD if login else ""))
    return MailNotification(credentials=credentials, recipients=["dba@example.com"], sender="pgkeeper@test.invalid",
                            **fields)


def test_a_password_is_never_sent_in_clear(monkeypatch) -> None:
    from pgkeeper.tls import PlaintextAuthRefused

    monkeypatch.delenv("SMTP_ALLOW_PLAINTEXT_AUTH", raising=False)
    with smtp(None) as (port, box):
        with pytest.raises(PlaintextAuthRefused) as refused:
            block(port, login=True).send("backup of crm OK", "body\n")
        message = str(refused.value)
        assert "\n" not in message and f"127.0.0.1:{port}" in message and "SMTP_ALLOW_PLAINTEXT_AUTH" in message
        assert PASSWORD not in message
        assert box.received == []

        block(port, login=False).send("backup of crm OK", "body\n")  # no credentials: nothing to protect
        assert [(m["tls"], m["login"]) for m in box.received] == [(False, None)]


def test_plaintext_login_only_when_explicitly_allowed(monkeypatch) -> None:
    with smtp(None) as (port, box):
        block(port, login=True, allow_plaintext_auth=True).send("by the block", "body\n")
        monkeypatch.setenv("SMTP_ALLOW_PLAINTEXT_AUTH", "true")
        block(port, login=True).send("by the environment", "body\n")
    assert [(m["tls"], m["login"]) for m in box.received] == [(False, USER.encode())] * 2


def test_starttls_is_used_when_offered(certs, monkeypatch) -> None:
    # The client trusts the throwaway CA (and verifies the certificate), as it would a real one.
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    monkeypatch.delenv("SMTP_ALLOW_PLAINTEXT_AUTH", raising=False)
    with smtp(certs) as (port, box):
        block(port, login=True).send("with login", "body\n")
        block(port, login=False).send("without login", "body\n")
    assert [(m["tls"], m["login"]) for m in box.received] == [(True, USER.encode()), (True, None)]
    assert all(PASSWORD.encode() not in m["data"] for m in box.received)


def test_a_certificate_that_does_not_verify_stops_the_mail(certs, monkeypatch) -> None:
    import ssl

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the system's CAs do not know the test CA
    with smtp(certs) as (port, box), pytest.raises(ssl.SSLError):
        block(port, login=True).send("with login", "body\n")
    assert box.received == []

"""TLS where it matters: the database connection's sslmode / sslrootcert from the environment,
the warning for a connection to another machine that is not encrypted, and SMTP that never
sends a password in clear unless told to.

No Prefect import at module level: the environment part runs wherever connections are built.
"""

from __future__ import annotations

import ipaddress
import os
import smtplib
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pgkeeper.errors import BadName, PlaintextAuthRefused

if TYPE_CHECKING:
    import psycopg

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TRUE = {"1", "true", "yes", "on"}


def tls_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """POSTGRES_SSLMODE and POSTGRES_SSLROOTCERT as connection fields (only those set)."""
    fields: dict[str, Any] = {}
    mode = env.get("POSTGRES_SSLMODE", "").strip().lower()
    if mode:
        if mode not in SSLMODES:
            raise BadName(f"POSTGRES_SSLMODE={mode!r}: use one of {', '.join(SSLMODES)}")
        fields["sslmode"] = mode
    if env.get("POSTGRES_SSLROOTCERT", "").strip():
        fields["sslrootcert"] = env["POSTGRES_SSLROOTCERT"].strip()
    return fields


def is_local_host(host: str) -> bool:
    """A Unix socket or a loopback address: nothing crosses a network. Every host of a
    comma-separated list must be local."""
    for h in (part.strip() for part in host.split(",")):
        if not h or h.startswith(("/", "@")) or h.lower() == "localhost":
            continue
        try:
            if ipaddress.ip_address(h.strip("[]")).is_loopback:
                continue
        except ValueError:
            pass
        return False
    return True


def plaintext_warning(host: str, port: int, sslmode: str, connection: psycopg.Connection) -> str | None:
    """The warning for an open connection to another machine that is not encrypted, or None."""
    if is_local_host(host) or connection.pgconn.ssl_in_use:
        return None
    return (f"the connection to {host}:{port} is not encrypted (sslmode={sslmode}): the password and the data "
            "cross the network in clear; set POSTGRES_SSLMODE=verify-full and POSTGRES_SSLROOTCERT (or the "
            "connection block's sslmode and sslrootcert)")


def plaintext_auth_allowed(block_setting: bool, env: Mapping[str, str] = os.environ) -> bool:
    return block_setting or env.get("SMTP_ALLOW_PLAINTEXT_AUTH", "").strip().lower() in TRUE


def smtp_connect(credentials: Any, allow_plaintext_auth: bool = False, timeout: float = 30) -> smtplib.SMTP:
    """An SMTP connection for prefect-email's EmailServerCredentials, logged in when it has a user.

    SSL (465) and STARTTLS are as configured; on a plain connection (INSECURE, the type for any
    other port) STARTTLS is used whenever the server offers it. Credentials are never sent over
    a connection that stayed unencrypted unless `allow_plaintext_auth`.
    """
    from prefect_email.credentials import SMTPServer, SMTPType

    host = credentials.smtp_server.value if isinstance(credentials.smtp_server, SMTPServer) \
        else str(credentials.smtp_server)
    kind = credentials.smtp_type
    port = credentials.smtp_port or kind.value
    context = ssl.create_default_context() if credentials.verify is not False \
        else ssl._create_unverified_context(protocol=ssl.PROTOCOL_TLS_CLIENT)  # noqa: SLF001 (the user's choice)
    if kind == SMTPType.SSL:
        server: smtplib.SMTP = smtplib.SMTP_SSL(host, port, context=context, timeout=timeout)
        encrypted = True
    else:
        server = smtplib.SMTP(host, port, timeout=timeout)
        try:
            server.ehlo()
            encrypted = kind == SMTPType.STARTTLS or server.has_extn("starttls")
            if encrypted:
                server.starttls(context=context)  # STARTTLS asked for but not offered: smtplib says so
                server.ehlo()
        except BaseException:
            server.close()
            raise
    if credentials.username:
        if not encrypted and not allow_plaintext_auth:
            server.close()
            raise PlaintextAuthRefused(
                f"not sending the SMTP password to {host}:{port} in clear: the server offers no STARTTLS; "
                "use SMTP_TYPE=SSL or STARTTLS, or allow it with SMTP_ALLOW_PLAINTEXT_AUTH=true "
                "(the mail block's allow_plaintext_auth)")
        try:
            server.login(credentials.username, credentials.password.get_secret_value())
        except BaseException:
            server.close()
            raise
    return server

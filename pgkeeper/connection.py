"""What a PostgreSQL connection does with its settings, without Prefect.

`PostgresConnection` (the block) and `PlainConnection` (the POSTGRES_* variables as a plain
object, for the backup's early start before Prefect is imported) share these verbs, so the two
reach the same server the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

# The block's defaults, field by field.
DEFAULTS: dict[str, Any] = {"host": "localhost", "port": 5432, "user": "postgres", "password": None,
                            "database": "postgres", "sslmode": "prefer", "sslrootcert": None,
                            "connect_timeout": 10}


class ConnectionVerbs:
    """Subclasses hold host, port, user, password (SecretStr-like or None), database, sslmode,
    sslrootcert and connect_timeout (no annotations here: pydantic would read them as fields)."""

    def libpq_env(self, database: str | None = None) -> dict[str, str]:
        """Environment for pg_dump, pg_restore, psql...: settings and password, no argv."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": database or self.database,
            "PGSSLMODE": self.sslmode,
            "PGCONNECT_TIMEOUT": str(self.connect_timeout),
            "PGAPPNAME": "pgkeeper",
        }
        if self.sslrootcert:
            env["PGSSLROOTCERT"] = self.sslrootcert
        if self.password is not None:
            env["PGPASSWORD"] = self.password.get_secret_value()
        return env

    def connect(self, database: str | None = None, **kwargs: object) -> psycopg.Connection:
        """A psycopg connection; failures become one line that never holds the password."""
        import psycopg

        from pgkeeper.errors import ConnectionFailed

        # UTF8 always: in a SQL_ASCII database psycopg would otherwise hand text back as bytes.
        kwargs.setdefault("client_encoding", "UTF8")
        if self.sslrootcert:
            kwargs.setdefault("sslrootcert", self.sslrootcert)
        try:
            return psycopg.connect(
                host=self.host, port=self.port, user=self.user, dbname=database or self.database,
                password=self.password.get_secret_value() if self.password else None,
                sslmode=self.sslmode, connect_timeout=self.connect_timeout,
                application_name="pgkeeper", **kwargs)  # type: ignore[arg-type]
        except psycopg.OperationalError as exc:
            message = describe_connect_error(self, database, exc)
            raise ConnectionFailed(message, transient="unreachable" in message) from None

    def describe(self, database: str | None = None) -> str:
        return f"{self.user}@{self.host}:{self.port}/{database or self.database}"


def describe_connect_error(conn: ConnectionVerbs, database: str | None, exc: Exception) -> str:
    """Turn libpq's multi-line error into the one line a user needs."""
    text = str(exc)
    where = conn.describe(database)
    if "password authentication failed" in text:
        return f"cannot connect to {where}: password authentication failed for user {conn.user!r}"
    if "does not exist" in text and "database" in text:
        return f"cannot connect to {where}: database {(database or conn.database)!r} does not exist"
    if "Connection refused" in text or "could not connect" in text or "timeout" in text.lower():
        return f"cannot connect to {where}: server unreachable (connection refused or timed out)"
    first = text.strip().splitlines()[-1] if text.strip() else "unknown error"
    if conn.password is not None:
        first = first.replace(conn.password.get_secret_value(), "**********")
    return f"cannot connect to {where}: {first}"


class Secret:
    """A password that prints as stars (pydantic's SecretStr without pydantic)."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"


class PlainConnection(ConnectionVerbs):
    """A connection's settings as plain attributes."""

    def __init__(self, **fields: Any) -> None:
        for name, default in DEFAULTS.items():
            setattr(self, name, fields.get(name, default))
        if isinstance(self.password, str):
            self.password = Secret(self.password)

    def __repr__(self) -> str:
        return f"PlainConnection({self.describe()})"


def connection_fields(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The old scripts' POSTGRES_* variables and the PGSSL* settings as connection fields, for
    the block (pgkeeper.config) and for PlainConnection alike."""
    from pgkeeper import settings
    from pgkeeper.errors import BadName
    from pgkeeper.tls import tls_from_env

    try:
        fields = settings.postgres_settings(env)
    except settings.SetupError:
        raise BadName(f"POSTGRES_PORT={env.get('POSTGRES_PORT')!r} is not a port number") from None
    return {**fields, **tls_from_env(env)}


def connection_from_env(env: Mapping[str, str] = os.environ, **overrides: Any) -> PlainConnection:
    """The old scripts' POSTGRES_* variables (then the flags) as a connection: the values
    pgkeeper.config.load_connection gives the run when no connection block is saved."""
    from pgkeeper.names import check_identifier

    fields = connection_fields(env)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    conn = PlainConnection(**fields)
    check_identifier("database", conn.database)
    return conn

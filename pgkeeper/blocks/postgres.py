"""The PostgreSQL connection block: where the database is and how to log in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

if TYPE_CHECKING:
    import psycopg


class PostgresConnection(Block):
    """A PostgreSQL server and database. The password is a secret: libpq tools receive it
    through their environment, never through their command line."""

    _block_type_name = "pgkeeper PostgreSQL connection"
    _block_type_slug = "pgkeeper-postgres-connection"
    _description = "A PostgreSQL database to back up or restore into (password kept secret)."

    host: str = Field(default="localhost", description="Server host name or address.")
    port: int = Field(default=5432, description="Server port.")
    user: str = Field(default="postgres", description="Role to connect as.")
    password: SecretStr | None = Field(default=None, description="Password of that role.")
    database: str = Field(default="postgres", description="Database to back up.")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        default="prefer", description="libpq sslmode: prefer encrypts when the server can; verify-full (with "
                                       "sslrootcert) also proves the server is the right one.")
    sslrootcert: str | None = Field(
        default=None, description="File of the CA certificate(s) the server's certificate must chain to "
                                  "(libpq sslrootcert; for verify-ca / verify-full).")
    connect_timeout: int = Field(default=10, description="Seconds to wait for the server.")

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

    def for_database(self, database: str) -> PostgresConnection:
        return self.model_copy(update={"database": database})


def describe_connect_error(conn: PostgresConnection, database: str | None, exc: Exception) -> str:
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

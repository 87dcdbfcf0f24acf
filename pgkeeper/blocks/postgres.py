"""The PostgreSQL connection block: where the database is and how to log in."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from pgkeeper.connection import ConnectionVerbs
from pgkeeper.connection import describe_connect_error as describe_connect_error


class PostgresConnection(ConnectionVerbs, Block):
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

    def for_database(self, database: str) -> PostgresConnection:
        return self.model_copy(update={"database": database})


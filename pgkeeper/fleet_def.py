"""A fleet as data: which databases the fleet flows back up and verify.

One place to edit: the Prefect variable `pgkeeper_fleet`, a list of connection block names.
Without it, every connection block whose name starts with `pgkeeper-fleet-` is a member; with
none of those either, the one default block. `pgkeeper setup` fills both from a fleet file:
one line per database,

    # database  host        port  user      password variable
    crm         10.0.0.5    5432  postgres  CRM_PGPASSWORD
    crm         10.0.0.6    5432  postgres  CRM2_PGPASSWORD
    billing     10.0.0.5    5432  backup    BILLING_PGPASSWORD

so the password itself never sits in the file, only the name of the environment variable
holding it. Two servers may carry databases of the same name: the block name includes the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pgkeeper.errors import SetupError

FLEET_VARIABLE = "pgkeeper_fleet"
FLEET_PREFIX = "pgkeeper-fleet-"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FleetEntry:
    database: str
    host: str
    port: int
    user: str
    password_variable: str

    @property
    def block_name(self) -> str:
        """`pgkeeper-fleet-<database>-<host>-<port>`, in the characters block names allow."""
        raw = f"{self.database}-{self.host}-{self.port}".lower()
        return FLEET_PREFIX + re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"


def parse_fleet_file(text: str, source: str = "fleet file") -> list[FleetEntry]:
    """The entries of a fleet file; one clear line naming the line number for a bad one."""
    from pgkeeper.names import check_identifier

    entries: list[FleetEntry] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source} line {number}"
        if len(fields) != 5:
            raise SetupError(f"{where}: expected 5 fields (database host port user PASSWORD_VARIABLE), "
                             f"got {len(fields)}")
        database, host, port, user, variable = fields
        try:
            check_identifier("database", database)
            check_identifier("role", user)
        except Exception as exc:
            raise SetupError(f"{where}: {exc}") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SetupError(f"{where}: port {port!r} is not a port number")
        if not _ENV_NAME.match(variable):
            raise SetupError(f"{where}: {variable!r} is not an environment variable name "
                             "(the file names the variable holding the password, never the password)")
        entries.append(FleetEntry(database, host, int(port), user, variable))
    names = [e.block_name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SetupError(f"{source}: the same database is listed twice ({', '.join(duplicates)})")
    return entries


def password_of(entry: FleetEntry, env: Mapping[str, str]) -> str:
    value = env.get(entry.password_variable)
    if not value:
        raise SetupError(f"{entry.password_variable} is not set (the password of {entry.database} "
                         f"on {entry.server})")
    return value


def fleet_members(connection_blocks: list[str] | None = None) -> list[str]:
    """The connection blocks of the fleet: the list given, else the `pgkeeper_fleet` variable,
    else the blocks named `pgkeeper-fleet-*`, else the default block. Each once, in order."""
    if connection_blocks:
        return list(dict.fromkeys(connection_blocks))
    from prefect.variables import Variable

    listed = Variable.get(FLEET_VARIABLE, default=None)
    if listed:
        return list(dict.fromkeys(str(name) for name in listed))
    found = prefixed_connection_blocks()
    if found:
        return found
    from pgkeeper.config import DEFAULT_CONNECTION_BLOCK

    return [DEFAULT_CONNECTION_BLOCK]


def prefixed_connection_blocks(prefix: str = FLEET_PREFIX) -> list[str]:
    """Names of the connection blocks starting with `prefix`, sorted."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from pgkeeper.blocks.postgres import PostgresConnection

    with get_client(sync_client=True) as client:
        try:  # no secrets: only the names are wanted
            documents = client.read_block_documents_by_type(PostgresConnection.get_block_type_slug(),
                                                            include_secrets=False)
        except ObjectNotFound:  # the block type is not registered yet: no blocks of it
            return []
    return sorted(d.name for d in documents if d.name and d.name.startswith(prefix))

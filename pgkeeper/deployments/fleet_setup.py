"""A fleet file into connection blocks and the `pgkeeper_fleet` variable (pgkeeper setup).

Each line gives a database, its server and the name of the environment variable holding its
password (pgkeeper.fleet_def); set-up saves one connection block per line and lists them, in
the file's order, in the variable the fleet flows read. Blocks of databases dropped from the
file are left alone (they may hold the only record of where an old database lived); they
simply stop being members.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import SecretStr

from pgkeeper.errors import SetupError

FLEET_DEPLOYMENTS = ("fleet/nightly", "fleet-verify/weekly")


def fleet_file(env: Mapping[str, str]) -> Path | None:
    value = (env.get("PGKEEPER_FLEET_FILE") or "").strip()
    return Path(value) if value else None


def apply_fleet_file(path: Path, env: Mapping[str, str], note: Callable[[str, str], None]) -> list[str]:
    """Save the file's connection blocks and the fleet variable; the block names, in order."""
    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.deployments.blocks import save_block
    from pgkeeper.deployments.server_objects import ensure_variable
    from pgkeeper.fleet_def import FLEET_VARIABLE, parse_fleet_file, password_of

    try:
        text = path.read_text()
    except OSError as exc:
        raise SetupError(f"cannot read the fleet file {path}: {exc.strerror}") from None
    entries = parse_fleet_file(text, str(path))
    if not entries:
        raise SetupError(f"the fleet file {path} lists no database")
    passwords = {e.block_name: password_of(e, env) for e in entries}  # all checked before anything is saved
    for e in entries:
        block = PostgresConnection(host=e.host, port=e.port, user=e.user, database=e.database,
                                   password=SecretStr(passwords[e.block_name]))
        note(f"block {e.block_name} ({e.database} on {e.server})", save_block(block, e.block_name)[0])
    names = [e.block_name for e in entries]
    note(f"variable {FLEET_VARIABLE} ({len(names)} databases)", ensure_variable(FLEET_VARIABLE, names))
    return names

"""TLS to PostgreSQL: POSTGRES_SSLMODE / POSTGRES_SSLROOTCERT reach psycopg and every libpq tool,
and a connection to another machine that is not encrypted is warned about at preflight.

A cluster of its own with ssl=on (a certificate from a throwaway CA) listening on this machine's
non-loopback address too, which is "another machine" as far as the client can tell. The server
logs each connection with `SSL enabled` or not: that is what the tests read.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pgkeeper.localcluster import LocalCluster, scratch_dir
from pgkeeper.pgtools import give_to_server_user
from tests.helpers import create_database, drop_database, run_cli_here
from tests.tls_certs import make_certs

PASSWORD = "tls-Pw-" + uuid.uuid4().hex[:8]


def outside_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, or None."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return next((a for a in out if "." in a and not a.startswith("127.")), None)


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[tuple[LocalCluster, str, Path, Path]]:
    """(cluster, its outside address, CA file, server log)."""
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    base = scratch_dir("pgkeeper-tls-")
    certs = make_certs(base / "certs", [address, "127.0.0.1"], "pg")
    for f in (certs.cert, certs.key):
        give_to_server_user(f)
    (base / "certs").chmod(0o755)
    cluster = LocalCluster(base / "data", password=PASSWORD, settings={
        "listen_addresses": f"'127.0.0.1,{address}'", "ssl": "on", "ssl_cert_file": f"'{certs.cert}'",
        "ssl_key_file": f"'{certs.key}'", "log_connections": "on"})
    try:
        cluster.init()
        with open(cluster.datadir / "pg_hba.conf", "a") as f:
            f.write(f"host all all {address}/32 scram-sha-256\n")
        cluster.start()
        yield cluster, address, certs.ca, base / f"postgres-{cluster.port}.log"
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tls_db(tls_cluster, tmp_path) -> Iterator[dict[str, str]]:
    """A small database on the TLS cluster; the old scripts' variables pointing at its outside address."""
    from pgkeeper.sample_crm import create_crm

    cluster, address, _, _ = tls_cluster
    name = "crm_" + uuid.uuid4().hex[:8]
    create_database(cluster, name)
    create_crm(cluster.conninfo(name), scale=0.05)
    try:
        yield {"POSTGRES_HOST": address, "POSTGRES_PORT": str(cluster.port), "POSTGRES_USER": "postgres",
               "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": name, "BACKUP_DIR": str(tmp_path / "repo")}
    finally:
        for db in (name, name + "_copy"):
            drop_database(cluster, db)


def pgkeeper_connections(log: Path, since: int) -> list[str]:
    """The server's `connection authorized` lines for pgkeeper's connections after byte `since`."""
    text = log.read_bytes()[since:].decode(errors="replace")
    return [line for line in text.splitlines() if "connection authorized" in line and "application_name=pgkeeper"
            in line]


def warning_events(api: str, database: str) -> list[dict]:
    body = {"filter": {"event": {"prefix": ["pgkeeper.warning"]}, "occurred": {"since": "2020-01-01T00:00:00Z"}},
            "limit": 50}
    events = httpx.post(f"{api}/events/filter", json=body, timeout=30).json()["events"]
    return [e for e in events if e["payload"].get("database") == database]


def test_the_environment_reaches_the_block_and_the_tools() -> None:
    from pgkeeper.config import connection_from_env
    from pgkeeper.errors import BadName

    conn = connection_from_env({"POSTGRES_HOST": "db.example.com", "POSTGRES_SSLMODE": "verify-full",
                                "POSTGRES_SSLROOTCERT": "/etc/ssl/db-ca.crt"})
    assert (conn.sslmode, conn.sslrootcert) == ("verify-full", "/etc/ssl/db-ca.crt")
    env = conn.libpq_env()
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", "/etc/ssl/db-ca.crt")
    assert connection_from_env({}).sslmode == "prefer"  # libpq's own default: TLS whenever the server has it
    with pytest.raises(BadName, match=r"^POSTGRES_SSLMODE='sometimes': use one of disable, "):
        connection_from_env({"POSTGRES_SSLMODE": "sometimes"})


def test_an_unencrypted_remote_connection_is_warned_and_the_setting_reaches_every_tool(
        tls_cluster, tls_db, prefect_api) -> None:
    _, address, _, log = tls_cluster
    since = log.stat().st_size
    env = {**tls_db, "POSTGRES_SSLMODE": "disable"}
    backup = run_cli_here("backup", env=env)
    assert backup.returncode == 0, backup.stderr
    restore = run_cli_here("restore", "latest", "--into", tls_db["POSTGRES_DB"] + "_copy", env=env)
    assert restore.returncode == 0, restore.stderr
    wanted = f"the connection to {address}:"
    assert wanted in backup.stdout + backup.stderr
    deadline = time.monotonic() + 30
    while not (events := warning_events(prefect_api, tls_db["POSTGRES_DB"])) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [e["payload"]["kind"] for e in events] == ["plaintext-connection"]
    assert wanted in events[0]["payload"]["message"] and PASSWORD not in str(events)
    # pg_dump, pg_restore, psql and psycopg alike: with sslmode=disable, not one used TLS (libpq's
    # default, prefer, would have: the server offers it).
    lines = pgkeeper_connections(log, since)
    assert len(lines) >= 5 and not [line for line in lines if "SSL enabled" in line]


def test_verify_full_works_through_every_tool_and_a_wrong_ca_is_refused(tls_cluster, tls_db, tmp_path) -> None:
    _, _, ca, log = tls_cluster
    since = log.stat().st_size
    env = {**tls_db, "POSTGRES_SSLMODE": "verify-full", "POSTGRES_SSLROOTCERT": str(ca)}
    backup = run_cli_here("backup", env=env)
    assert backup.returncode == 0, backup.stderr
    assert "is not encrypted" not in backup.stdout + backup.stderr
    restore = run_cli_here("restore", "latest", "--into", tls_db["POSTGRES_DB"] + "_copy", env=env)
    assert restore.returncode == 0, restore.stderr
    lines = pgkeeper_connections(log, since)
    assert len(lines) >= 5 and all("SSL enabled" in line for line in lines)

    # A CA that did not sign the server's certificate: refused in one line, nothing done.
    other = make_certs(tmp_path / "other", ["127.0.0.1"], "other")
    refused = run_cli_here("backup", env={**env, "POSTGRES_SSLROOTCERT": str(other.ca)})
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("pgkeeper: error:") and "certificate verify failed" in last, refused.stderr
    assert PASSWORD not in refused.stderr + refused.stdout

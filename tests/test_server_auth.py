"""The local Prefect server pgkeeper starts is locked: a real `pgkeeper server start`, spoken
to over plain HTTP with and without its credential, and a pgkeeper command that finds it.

One server for the module (start-up costs 15-70 s); stopped, and its home removed, in `finally`.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pgkeeper.localcluster import free_port
from tests.helpers import ROOT
from tests.prefect_template import seed_pgkeeper_server


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgkeeper.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def clean_env(home: Path, port: int) -> dict[str, str]:
    """A user's environment: pgkeeper's home and port, no API and no credential configured."""
    env = {**os.environ, "PGKEEPER_HOME": str(home / "pgkeeper"), "PREFECT_HOME": str(home / "prefect"),
           "PGKEEPER_SERVER_PORT": str(port)}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def locked_server() -> Iterator[tuple[str, dict[str, str], str]]:
    """(API URL, environment, credential) of a server started as a user starts it."""
    home = Path(tempfile.mkdtemp(prefix="pgkeeper-auth-"))
    port = free_port()
    env = clean_env(home, port)
    try:
        seed_pgkeeper_server(home / "pgkeeper")  # already migrated: no 116 migrations at start
        started = cli("server", "start", env=env, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        credential = (home / "pgkeeper" / "server-auth").read_text().strip()
        assert credential not in started.stdout + started.stderr  # the path is printed, not the secret
        yield f"http://127.0.0.1:{port}/api", env, credential
    finally:
        cli("server", "stop", env=env)
        shutil.rmtree(home, ignore_errors=True)


def call(api: str, method: str, path: str, body: dict | None = None, credential: str | None = None):  # noqa: ANN201
    headers = {}
    if credential is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credential.encode()).decode()
    return httpx.request(method, f"{api}{path}", json=body, headers=headers, timeout=30)


def test_the_credential_is_private_and_never_on_a_command_line(locked_server) -> None:
    api, env, credential = locked_server
    path = Path(env["PGKEEPER_HOME"]) / "server-auth"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(credential) > 40 and credential.startswith("pgkeeper:")
    server_pid = int((Path(env["PGKEEPER_HOME"]) / "prefect-server" / "server.pid").read_text())
    assert credential.encode() in Path(f"/proc/{server_pid}/environ").read_bytes()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert credential.encode() not in (proc / "cmdline").read_bytes(), proc.name
            except OSError:
                continue  # gone meanwhile


def test_without_the_credential_no_block_is_read_and_no_run_created(locked_server) -> None:
    api, env, credential = locked_server
    # A Prefect client holding the credential saves a secret block (as `pgkeeper setup` would).
    saved = subprocess.run(
        [sys.executable, "-c", "from prefect.blocks.system import Secret; "
                               "Secret(value='locked-away-42').save('auth-test', overwrite=True)"],
        env={**env, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": credential},
        capture_output=True, text=True, timeout=120)
    assert saved.returncode == 0, saved.stderr[-2000:]

    assert call(api, "GET", "/health").status_code == 200  # probes stay open, and say nothing
    for who in (None, "pgkeeper:wrong", credential + "x"):
        for include_secrets in (True, False):
            refused = call(api, "POST", "/block_documents/filter", {"include_secrets": include_secrets}, who)
            assert refused.status_code == 401 and "locked-away-42" not in refused.text
        assert call(api, "POST", "/flows/", {"name": "intruder"}, who).status_code == 401
        assert call(api, "POST", "/flow_runs/", {"flow_id": "00000000-0000-0000-0000-000000000000"},
                    who).status_code == 401
        assert call(api, "POST", "/deployments/filter", {}, who).status_code == 401

    # With it, the same calls work: the lock, not a broken server, refused them.
    docs = call(api, "POST", "/block_documents/filter", {"include_secrets": True}, credential)
    assert docs.status_code == 200 and "locked-away-42" in docs.text
    flow = call(api, "POST", "/flows/", {"name": "auth-test"}, credential)
    assert flow.status_code in (200, 201)
    run = call(api, "POST", "/flow_runs/", {"flow_id": flow.json()["id"]}, credential)
    assert run.status_code in (200, 201), run.text


def test_a_pgkeeper_command_finds_the_server_and_uses_the_credential(locked_server, pg_env) -> None:
    api, env, credential = locked_server
    result = cli("backup", env={**env, **pg_env})
    assert result.returncode == 0, result.stdout + result.stderr
    assert credential not in result.stdout + result.stderr
    runs = call(api, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["backup"]}}}, credential)
    assert runs.status_code == 200 and [r for r in runs.json() if r["state_type"] == "COMPLETED"]


def test_a_server_with_another_credential_is_refused_in_one_line(locked_server, tmp_path) -> None:
    api, env, _ = locked_server
    other = tmp_path / "other-home"
    other.mkdir(mode=0o700)
    (other / "server-auth").write_text("pgkeeper:not-the-servers\n")
    (other / "server-auth").chmod(0o600)
    result = cli("backup", env={**env, "PGKEEPER_HOME": str(other), "BACKUP_DIR": str(tmp_path / "r")})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pgkeeper: error: the Prefect server at") and "refuses pgkeeper's credential" in last, \
        result.stderr
    assert "Traceback" not in result.stderr

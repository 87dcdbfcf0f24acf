"""Making sure flows run against a Prefect API, never in Prefect's slow ephemeral mode.

If PREFECT_API_URL is set (environment or active Prefect profile) it is used. Otherwise a
local Prefect server (SQLite under pgkeeper's home, loopback only) is started once in the
background and reused. Nothing here imports prefect: it must run before prefect is imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from pgkeeper.errors import BadName, PgkeeperError
from pgkeeper.home import pgkeeper_home
from pgkeeper.server_auth import (
    CLIENT_SETTING,
    SERVER_SETTING,
    answers,
    credential_path,
    server_credential,
    use_credential,
)

DEFAULT_PORT = 4200
DEFAULT_HOST = "127.0.0.1"
DATABASE_URL_SETTING = "PGKEEPER_SERVER_DATABASE_URL"  # what `--database-url` sets
PASSWORD_SETTINGS = ("PREFECT_SERVER_DATABASE_PASSWORD", "PREFECT_API_DATABASE_PASSWORD")
QUIET_PREFECT = {
    # Without internet, telemetry logs an ERROR on every run.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def server_dir() -> Path:
    path = pgkeeper_home() / "prefect-server"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def server_host() -> str:
    """The address the local server listens on: loopback unless PGKEEPER_SERVER_HOST names
    one that workers on other machines reach (then lock it: it is no longer private)."""
    return os.environ.get("PGKEEPER_SERVER_HOST", "").strip() or DEFAULT_HOST


def local_api_url(port: int | None = None) -> str:
    port = port or int(os.environ.get("PGKEEPER_SERVER_PORT", DEFAULT_PORT))
    return f"http://{server_host()}:{port}/api"


def prefect_database_url(url: str, env: Mapping[str, str] = os.environ) -> str:
    """Prefect's connection URL for the server's own database from a user's URL.

    `postgresql://user@host:port/db` becomes the async driver's URL. A password never comes on
    the command line (every user reads argv in /proc): it comes from Prefect's own setting
    PREFECT_SERVER_DATABASE_PASSWORD, which Prefect substitutes for the placeholder.
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url.strip())
    if parts.scheme.startswith("sqlite"):
        return url.strip()
    if parts.scheme not in {"postgres", "postgresql", "postgresql+asyncpg"}:
        raise BadName(f"database URL scheme {parts.scheme!r} is not PostgreSQL (postgresql://user@host:port/db)")
    if parts.password is not None:
        raise BadName("the database URL holds a password: put it in PREFECT_SERVER_DATABASE_PASSWORD "
                      "instead (command lines are readable by every user)")
    if not parts.hostname or not parts.path.strip("/"):
        raise BadName("the database URL needs a host and a database name (postgresql://user@host:port/db)")
    netloc = parts.netloc
    if parts.username and any(env.get(k) for k in PASSWORD_SETTINGS):
        setting = next(k for k in PASSWORD_SETTINGS if env.get(k))
        netloc = netloc.replace(f"{parts.username}@", f"{parts.username}:${{{setting}}}@", 1)
    return urlunsplit(("postgresql+asyncpg", netloc, parts.path, parts.query, ""))


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile, if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml"))
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "ephemeral")
    url = data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(url) if url else None


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200 and json.loads(r.read() or b"true") is True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _pid_file() -> Path:
    return server_dir() / "server.pid"


def server_env(url: str) -> dict[str, str]:
    """The server's environment. The UI is told its API's address: by default it looks for
    the API on port 4200, and every page fails on any other port. The credential that locks
    the API goes here, never on the command line (server_auth.py)."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    credential = server_credential(create=True)
    env = {**os.environ, **QUIET_PREFECT, "PREFECT_HOME": str(server_dir() / "home"),
           "PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": port,
           "PREFECT_UI_API_URL": url, "PREFECT_UI_URL": url.removesuffix("/api"),
           SERVER_SETTING: credential, CLIENT_SETTING: credential}  # type: ignore[dict-item]
    env.pop("PREFECT_API_URL", None)
    database_url = os.environ.get(DATABASE_URL_SETTING, "").strip()
    if database_url:  # e.g. PostgreSQL, for a server that several machines' workers share
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_database_url(database_url, env)
    return env


def start_local_server(port: int | None = None, timeout: float | None = None, announce: bool = False) -> str:
    """Start (or find running) the local Prefect server; return its API URL.

    With `announce`, a progress line with the elapsed time while it starts (30-70 s on a
    small machine, most of it Prefect's database migrations on the first start).
    """
    url = local_api_url(port)
    if is_healthy(url):
        return url
    # A first start on PostgreSQL runs every migration: minutes on a busy small machine.
    timeout = timeout or float(os.environ.get("PGKEEPER_SERVER_START_TIMEOUT", "120"))
    sdir = server_dir()
    with open(sdir / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", server_host(),
             "--port", url.split(":")[-1].split("/")[0]],
            env=server_env(url), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    _pid_file().write_text(str(proc.pid))
    started = time.monotonic()
    progress = Progress(announce)
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            progress.done("failed")
            raise PgkeeperError(f"the local Prefect server exited at start-up: see {sdir / 'server.log'}")
        if is_healthy(url):
            progress.done(f"up after {time.monotonic() - started:.0f} s")
            return url
        progress.tick(f"starting the local Prefect server ({time.monotonic() - started:.0f} s)")
        time.sleep(0.5)
    progress.done("gave up")
    stop_local_server()
    raise PgkeeperError(f"the local Prefect server did not start within {timeout:.0f} s: "
                        f"see {sdir / 'server.log'}")


class Progress:
    """One line on stderr that counts up: rewritten in place on a terminal, every 10 s otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.tty, self.last, self.text = enabled, sys.stderr.isatty(), 0.0, ""

    def tick(self, text: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            print(f"\r{text}", end="", file=sys.stderr, flush=True)
        elif now - self.last >= 10:
            print(text, file=sys.stderr, flush=True)
        else:
            return
        self.last, self.text = now, text

    def done(self, outcome: str) -> None:
        if self.enabled and self.text:
            print(f"\r{self.text}: {outcome}" if self.tty else outcome, file=sys.stderr, flush=True)


def stop_local_server() -> bool:
    """Stop the server we started; True if one was running."""
    pid_file = _pid_file()
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    for _ in range(100):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)
    return True


def ensure_api(announce: bool = True) -> str:
    """Point this process at a Prefect API before prefect is imported; return its URL."""
    for k, v in QUIET_PREFECT.items():
        os.environ.setdefault(k, v)
    port = int(os.environ.get("PGKEEPER_SERVER_PORT", DEFAULT_PORT))
    url = configured_api_url()
    if url:
        # A configured URL that is our own local server gets its credential too.
        use_credential(url, port)
        return url
    url = local_api_url()
    if not is_healthy(url):
        if announce:
            print(f"No Prefect API configured: starting a local Prefect server at {url[:-4]} "
                  "(stop it with `pgkeeper server stop`)", file=sys.stderr)
        start_local_server(announce=announce)
    elif announce:
        print(f"Using the local Prefect server at {url[:-4]}", file=sys.stderr)
    os.environ["PREFECT_API_URL"] = url
    use_credential(url, port)
    check_lock(url)
    return url


def check_lock(url: str) -> None:
    """One clear line when the local server refuses our credential; a warning when it takes
    requests without one (a server started before pgkeeper locked it)."""
    credential = os.environ.get(CLIENT_SETTING)
    status = answers(url, credential)
    if status == 401:
        raise PgkeeperError(f"the Prefect server at {url[:-4]} refuses pgkeeper's credential "
                            f"({credential_path()}): restart it with `pgkeeper server stop` and run "
                            "the command again")
    if status == 200 and answers(url, None) == 200:
        print(f"warning: the Prefect server at {url[:-4]} accepts requests without a credential; "
              "restart it with `pgkeeper server stop` to lock it", file=sys.stderr)

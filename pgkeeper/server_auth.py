"""The credential that locks the local Prefect server pgkeeper starts for itself.

Prefect's basic auth: the server refuses every API call (health probes aside) whose
`Authorization: Basic` header does not carry PREFECT_SERVER_API_AUTH_STRING; clients send
PREFECT_API_AUTH_STRING. pgkeeper generates one random credential, keeps it 0600 in its home,
and hands it to the server, to itself and to the workers it starts through the environment,
never through a command line (argv is readable by every user in /proc).

Nothing here imports prefect: it runs before prefect is imported and reads its settings.
"""

from __future__ import annotations

import base64
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from pgkeeper.home import pgkeeper_home

CREDENTIAL_FILE = "server-auth"
CLIENT_SETTING = "PREFECT_API_AUTH_STRING"  # prefect.settings.models.api.APISettings.auth_string
SERVER_SETTING = "PREFECT_SERVER_API_AUTH_STRING"  # prefect.settings.models.server.api.ServerAPISettings
USER = "pgkeeper"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def credential_path() -> Path:
    return pgkeeper_home() / CREDENTIAL_FILE


def server_credential(create: bool = True) -> str | None:
    """The local server's credential (`pgkeeper:<random>`), generated on first use; None when
    there is none and `create` is False."""
    path = credential_path()
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # a copy restored with loose permissions: close it again
        return text
    if not create:
        return None
    value = f"{USER}:{secrets.token_urlsafe(32)}"
    tmp = path.with_name(f".{CREDENTIAL_FILE}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # two processes starting at once: the first credential wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def is_local_server(url: str, port: int) -> bool:
    """Whether `url` is the API of pgkeeper's local server (loopback, its port): only that
    server ever gets the credential, never an API configured elsewhere."""
    netloc = url.split("//", 1)[-1].split("/", 1)[0]
    host, _, port_text = netloc.rpartition(":")
    # A server started with PGKEEPER_SERVER_HOST (for workers on other machines) is ours too.
    ours = LOOPBACK | {os.environ.get("PGKEEPER_SERVER_HOST", "").strip() or "127.0.0.1"}
    return host in ours and port_text == str(port)


def use_credential(url: str, port: int) -> bool:
    """Give this process (and every child it starts) the credential for `url` when it is the
    local server; an auth string the user set themselves wins. True when one is in use."""
    if os.environ.get(CLIENT_SETTING):
        return True
    if not is_local_server(url, port):
        return False
    value = server_credential(create=False)
    if value:
        os.environ[CLIENT_SETTING] = value
    return bool(value)


def answers(api_url: str, credential: str | None, timeout: float = 5.0) -> int | None:
    """The HTTP status of an authenticated-only call (the server's version), or None when
    the server does not answer."""
    request = urllib.request.Request(f"{api_url}/admin/version")
    if credential:
        token = base64.b64encode(credential.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None

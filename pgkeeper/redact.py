"""Every secret this process knows, and scrubbing them out of what leaves it (Sentry events).

Secrets come from three places: the blocks a run loaded (database password, AWS secret key and
session token, SMTP password), the environment (the old scripts' variables, Prefect's auth
strings, anything named like a password, secret, token or private key), and pgkeeper's own
files (the local server's credential). Private keys are also recognised by their form (PEM
blocks, age secret keys), wherever they come from. Code that loads another secret hands it
to `remember` so that scrubbing knows it too.
"""

from __future__ import annotations

import base64
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "**********"
# Shorter values would mask ordinary words; libpq, AWS and SMTP secrets are longer in practice.
MIN_LENGTH = 4
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|_PASS|SECRET|TOKEN|PRIVATE_KEY|AUTH_STRING|API_KEY)$"
                         r"|SECRET_ACCESS_KEY|PRIVATE_KEY", re.IGNORECASE)
KEY_FORMS = [
    re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----", re.DOTALL),
    re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+"),
]

_remembered: set[str] = set()


def remember(*values: str | None) -> None:
    """Make scrubbing know a secret this process loaded (a key from a Secret block, a file)."""
    _remembered.update(v for v in values if v)


def _secret_value(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return str(getter()) if getter else str(value)


def block_secrets(*blocks: Any) -> list[str]:
    """The secret fields of pgkeeper's blocks: connection, repository (its S3 credentials), mail."""
    found: list[str | None] = []
    for block in blocks:
        if block is None:
            continue
        found.append(_secret_value(getattr(block, "password", None)))
        offsite = getattr(block, "offsite", None)
        credentials = getattr(offsite, "credentials", None) or getattr(block, "credentials", None)
        for name in ("aws_secret_access_key", "aws_session_token", "password"):
            found.append(_secret_value(getattr(credentials, name, None)))
    return [s for s in found if s]


def env_secrets(env: Mapping[str, str] = os.environ) -> list[str]:
    return [v for k, v in env.items() if v and SECRET_NAME.search(k)]


def file_secrets() -> list[str]:
    from pgkeeper.server_auth import CREDENTIAL_FILE

    home = os.environ.get("PGKEEPER_HOME") or os.path.expanduser("~/.pgkeeper")
    try:
        with open(os.path.join(home, CREDENTIAL_FILE)) as f:
            return [f.read().strip()]
    except OSError:
        return []


def known_secrets(*blocks: Any, env: Mapping[str, str] = os.environ) -> list[str]:
    """Every secret value known here, longest first (so a secret containing another goes whole)."""
    values = {*block_secrets(*blocks), *env_secrets(env), *file_secrets(), *_remembered}
    values = {v.strip() for v in values if len(v.strip()) >= MIN_LENGTH}
    # The forms a secret takes in a URL or an Authorization header are the secret too.
    encoded = {urllib.parse.quote(v, safe="") for v in values} | {urllib.parse.quote_plus(v) for v in values}
    encoded |= {base64.b64encode(v.encode()).decode() for v in values}
    return sorted(values | encoded, key=len, reverse=True)


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, MASK)
    for form in KEY_FORMS:
        text = form.sub(MASK, text)
    return text


def scrub(value: Any, secrets: list[str]) -> Any:
    """`value` (an event: dicts, lists, strings) with every secret masked, keys included."""
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value

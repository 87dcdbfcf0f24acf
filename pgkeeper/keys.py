"""Where pgkeeper's keys live: a 0600 key directory, with Prefect Secret blocks for workers.

    <PGKEEPER_KEYS_DIR or PGKEEPER_HOME/keys>/
        recipients.txt   public keys new files are encrypted to (age1..., not secret)
        identities.txt   private keys that read backups (AGE-SECRET-KEY-1..., 0600); rotation
                         appends, so old backups stay readable
        manifest.key     HMAC keys that sign manifests (hex, 0600); the first signs

A host that only writes backups or WAL needs recipients.txt and manifest.key, never
identities.txt. Losing every copy of an identity loses every backup encrypted to it, so
`create_key` and `rotate_key` also write the new private key to a file the user is told to
store somewhere else.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pgkeeper import sealing
from pgkeeper.storage.atomic import atomic_write_bytes

RECIPIENTS = "recipients.txt"
IDENTITIES = "identities.txt"
MANIFEST_KEY = "manifest.key"
IDENTITY_FILE_ENV = "PGKEEPER_AGE_IDENTITY_FILE"


def keys_dir() -> Path:
    if os.environ.get("PGKEEPER_KEYS_DIR"):
        return Path(os.environ["PGKEEPER_KEYS_DIR"])
    from pgkeeper.home import pgkeeper_home

    return pgkeeper_home() / "keys"


def _lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except FileNotFoundError:
        return []


def recipients(root: Path | None = None) -> list[str]:
    return _lines((root or keys_dir()) / RECIPIENTS)


def identities(root: Path | None = None) -> list[str]:
    """Private keys from $PGKEEPER_AGE_IDENTITY_FILE and the key directory."""
    found: list[str] = []
    extra = os.environ.get(IDENTITY_FILE_ENV)
    for path in ([Path(extra)] if extra else []) + [(root or keys_dir()) / IDENTITIES]:
        try:
            found += sealing.parse_identities(path.read_text())
        except FileNotFoundError:
            continue
    return found


def mac_keys(root: Path | None = None, create: bool = False) -> list[bytes]:
    """The manifest keys; with `create`, a first one is made when there is none (losing it loses
    no data: manifests can be re-signed after a check)."""
    path = (root or keys_dir()) / MANIFEST_KEY
    keys = [bytes.fromhex(k) for k in _lines(path)]
    if not keys and create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(path, secrets.token_hex(32).encode() + b"\n")
        keys = [bytes.fromhex(k) for k in _lines(path)]
    return keys


def _write_backup_copy(identity: str, recipient: str, to: Path) -> Path:
    to = to / f"pgkeeper-key-{sealing.fingerprint(recipient)}.txt" if to.is_dir() else to
    text = (f"# pgkeeper backup encryption key {sealing.fingerprint(recipient)}\n"
            f"# public key: {recipient}\n"
            "# Keep this file somewhere other than the machines pgkeeper runs on: without it,\n"
            "# the backups encrypted to this key cannot be read. Decrypt by hand with\n"
            "#   age -d -i this-file backup.dump.zst | zstd -d > backup.dump\n"
            f"{identity}\n")
    atomic_write_bytes(to, text.encode(), mode=0o600)
    return to


def create_key(backup_copy: Path, root: Path | None = None, rotate: bool = False) -> tuple[str, str, Path]:
    """A new key pair: the identity joins identities.txt, its public key becomes the one new
    files are encrypted to; (fingerprint, public key, path of the copy to keep elsewhere)."""
    from pgkeeper.errors import BadName

    root = root or keys_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = sealing.parse_identities((root / IDENTITIES).read_text()) if (root / IDENTITIES).exists() else []
    if existing and not rotate:
        raise BadName(f"{root / IDENTITIES} already holds a key: use `pgkeeper key rotate` to add a new one")
    identity, recipient = sealing.generate_identity()
    copy = _write_backup_copy(identity, recipient, backup_copy)
    atomic_write_bytes(root / IDENTITIES, ("\n".join([*existing, identity]) + "\n").encode(), mode=0o600)
    atomic_write_bytes(root / RECIPIENTS, (recipient + "\n").encode(), mode=0o644)
    mac_keys(root, create=True)
    return sealing.fingerprint(recipient), recipient, copy

"""Client-side encryption and manifest authentication: what makes a stolen bucket useless.

Encryption is age (https://age-encryption.org/v1, through the `pyrage` bindings): a documented
format that Debian's `age` tool decrypts by hand (`age -d -i key.txt file.zst.age | zstd -d`).
Files are encrypted to X25519 *recipients* (public keys), so the hosts that write backups and
WAL hold no key that can read them; only the restoring side holds an *identity* (private key).
The stored bytes are compressed first, then encrypted, and the manifest's sha256 is of what is
stored, so integrity is checked without any key.

Manifests are authenticated with HMAC-SHA256 under a key the bucket does not hold: whoever can
write to the bucket cannot swap a dump together with its checksum.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterable
from typing import Any, BinaryIO

from pgkeeper.errors import IntegrityError, PgkeeperError

AGE = "age"
AGE_MAGIC = b"age-encryption.org/v1\n"  # the first line of every age file
SUFFIX = ".age"
MAC_FIELD = "authentication"
PIPE_CHUNK = 1 << 20


class KeyMissing(PgkeeperError):
    """A key is missing, malformed or cannot open a file."""


def generate_identity() -> tuple[str, str]:
    """(private identity 'AGE-SECRET-KEY-1...', public recipient 'age1...')."""
    from pyrage import x25519

    ident = x25519.Identity.generate()
    return str(ident), str(ident.to_public())


def recipient_of(identity: str) -> str:
    from pyrage import x25519

    try:
        return str(x25519.Identity.from_str(identity.strip()).to_public())
    except Exception:
        raise KeyMissing("not an age identity (AGE-SECRET-KEY-1...)") from None


def fingerprint(recipient: str) -> str:
    """A short, stable name for a public key, recorded with every file it encrypts."""
    return hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def parse_identities(text: str) -> list[str]:
    """Identities from an age key file: one per line, '#' comments ignored."""
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("AGE-SECRET-KEY-")]


def _recipients(recipients: Iterable[str]) -> list[Any]:
    from pyrage import x25519

    try:
        return [x25519.Recipient.from_str(r.strip()) for r in recipients]
    except Exception:
        raise KeyMissing("an encryption recipient is not an age public key (age1...)") from None


def _identities(identities: Iterable[str]) -> list[Any]:
    from pyrage import x25519

    try:
        return [x25519.Identity.from_str(i.strip()) for i in identities]
    except Exception:
        raise KeyMissing("an identity is not an age private key (AGE-SECRET-KEY-1...)") from None


def encrypt_bytes(data: bytes, recipients: list[str]) -> bytes:
    import pyrage

    return pyrage.encrypt(data, _recipients(recipients))


def decrypt_bytes(data: bytes, identities: list[str], label: str) -> bytes:
    import pyrage

    if not identities:
        raise KeyMissing(f"{label} is encrypted and no decryption key is configured")
    try:
        return pyrage.decrypt(data, _identities(identities))
    except pyrage.DecryptError as exc:
        raise _decrypt_failure(exc, label) from None


def _decrypt_failure(exc: BaseException, label: str) -> PgkeeperError:
    if isinstance(exc, PgkeeperError):  # the stored bytes failed their own check first
        return exc
    if "No matching keys" in str(exc):
        return KeyMissing(f"{label}: none of the configured keys can decrypt it (was the key rotated or lost?)")
    return IntegrityError(f"{label}: decryption failed: the file is damaged or was tampered with")


class EncryptingWriter:
    """A writable file that encrypts into `out` (age, streamed: pyrage pulls from a pipe in a
    thread, so memory stays flat however large the dump). close() finishes the stream."""

    def __init__(self, out: BinaryIO, recipients: list[str]) -> None:
        import pyrage

        keys = _recipients(recipients)
        rfd, wfd = os.pipe()
        self._pipe_in = os.fdopen(wfd, "wb", buffering=0)
        pipe_out = os.fdopen(rfd, "rb", buffering=PIPE_CHUNK)
        self._error: BaseException | None = None

        def pump() -> None:
            try:
                pyrage.encrypt_io(pipe_out, out, keys)
            except BaseException as exc:  # reported by close()
                self._error = exc
            finally:
                pipe_out.close()

        self._thread = threading.Thread(target=pump, name="age-encrypt", daemon=True)
        self._thread.start()

    def write(self, data: Any) -> int:
        try:
            self._pipe_in.write(data)
        except BrokenPipeError:
            self._thread.join()
            raise IntegrityError(f"encryption stopped: {self._error}") from None
        return len(data)

    def close(self) -> None:
        if not self._pipe_in.closed:
            self._pipe_in.close()
        self._thread.join()
        if self._error is not None:
            raise IntegrityError(f"encryption failed: {self._error}")

    def close_quietly(self) -> None:
        """End the stream after a failed write (its output is discarded anyway)."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the caller's own error is the one to report
            pass


class DecryptingReader:
    """A readable file of the plaintext of an age stream `src` (pyrage pushes into a pipe from a
    thread). Damage or a wrong key is raised at the latest when the end is read."""

    def __init__(self, src: BinaryIO, identities: list[str], label: str) -> None:
        import pyrage

        if not identities:
            raise KeyMissing(f"{label} is encrypted and no decryption key is configured")
        keys = _identities(identities)
        rfd, wfd = os.pipe()
        self._out = os.fdopen(rfd, "rb", buffering=PIPE_CHUNK)
        pipe_in = os.fdopen(wfd, "wb", buffering=0)
        self._error: BaseException | None = None
        self.label = label

        def pump() -> None:
            try:
                pyrage.decrypt_io(src, pipe_in, keys)
            except BrokenPipeError:
                pass  # the reader stopped early
            except BaseException as exc:
                self._error = exc
            finally:
                pipe_in.close()

        self._thread = threading.Thread(target=pump, name="age-decrypt", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise _decrypt_failure(self._error, self.label)

    def read(self, n: int = -1) -> bytes:
        data = self._out.read(n)
        if not data or (n < 0):
            self._check()
        return data

    def readinto(self, b: Any) -> int:
        n = self._out.readinto(b)
        if not n:
            self._check()
        return n or 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._out.close()
        self._thread.join()

    def __enter__(self) -> DecryptingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- manifest authentication ---------------------------------------------------------------

def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def mac_key_id(key: bytes) -> str:
    return hashlib.sha256(b"pgkeeper manifest key id" + key).hexdigest()[:16]


def sign_manifest(data: bytes, key: bytes) -> bytes:
    """The manifest with an HMAC-SHA256 of its canonical form added."""
    obj = json.loads(data)
    obj.pop(MAC_FIELD, None)
    mac = hmac.new(key, _canonical(obj), hashlib.sha256).hexdigest()
    obj[MAC_FIELD] = {"alg": "hmac-sha256", "key_id": mac_key_id(key), "mac": mac}
    return json.dumps(obj, indent=2, ensure_ascii=False).encode() + b"\n"


def check_manifest(data: bytes, keys: list[bytes], label: str) -> bytes:
    """The manifest if one of `keys` authenticates it; IntegrityError naming it otherwise."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise IntegrityError(f"{label} is not valid JSON") from None
    auth = obj.pop(MAC_FIELD, None) if isinstance(obj, dict) else None
    if not isinstance(auth, dict) or "mac" not in auth:
        raise IntegrityError(f"{label} is not signed: refusing a manifest this repository did not write")
    body = _canonical(obj)
    for key in keys:
        if hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), str(auth["mac"])):
            return data
    if not any(mac_key_id(k) == auth.get("key_id") for k in keys):
        raise IntegrityError(f"{label} is signed with a key this repository does not know "
                             f"(key id {auth.get('key_id')})")
    raise IntegrityError(f"{label} was changed after it was signed: refusing it")

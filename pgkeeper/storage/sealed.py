"""Encryption and manifest authentication as a filter around any driver.

`SealedStorage(inner, keys)` is what `BackupRepository.storage()` returns: every file written
through it is encrypted to the repository's recipients before it reaches the driver (so the
sha256 and size in the manifest are of the ciphertext), every manifest is signed on the way in
and checked on the way out, and `open_plain` gives back a file's plaintext, checked against the
manifest. Copies between repositories (`copy_from`) move ciphertext as it is.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pgkeeper import sealing
from pgkeeper.errors import IntegrityError
from pgkeeper.manifest import StoredFile
from pgkeeper.storage.interface import MANIFEST, Storage
from pgkeeper.storage.streams import CHUNK, CheckedReader


class KeySet:
    """The keys one repository uses: recipients to encrypt to (public), identities to decrypt
    with (private, loaded only when something must be read), MAC keys for manifests (the first
    signs, all verify)."""

    def __init__(self, recipients: Any, mac_keys: list[bytes], identities: Any = None) -> None:
        # Lists, or callables returning one: a reader never needs recipients, a writer never
        # needs identities, and neither is looked up until needed.
        self._recipients = recipients
        self.mac_keys = mac_keys
        self._identities = identities

    @property
    def recipients(self) -> list[str]:
        if callable(self._recipients):
            self._recipients = self._recipients()
        return [r.strip() for r in self._recipients or [] if r.strip()]

    @property
    def fingerprints(self) -> list[str]:
        return [sealing.fingerprint(r) for r in self.recipients]

    def identities(self) -> list[str]:
        if callable(self._identities):
            self._identities = self._identities()
        return list(self._identities or [])


class _SealingWriter:
    """What `write_file` yields: plaintext in, ciphertext to the driver's (hashing) writer."""

    def __init__(self, stored: Any, recipients: list[str]) -> None:
        self.stored = stored
        self.encrypting = sealing.EncryptingWriter(stored, recipients)

    def write(self, data: Any) -> int:
        return self.encrypting.write(data)

    @property
    def sha256(self) -> str:
        return self.stored.sha256

    @property
    def size(self) -> int:
        return self.stored.size


class SealedStorage:
    def __init__(self, inner: Storage, keys: KeySet) -> None:
        self.inner = inner
        self.keys = keys

    def __getattr__(self, name: str) -> Any:  # everything not sealed is the driver's own
        return getattr(self.inner, name)

    @property
    def encryption(self) -> str | None:
        return sealing.AGE if self.keys.recipients else None

    def stored_file(self, name: str, writer: Any, raw_size: int | None = None) -> StoredFile:
        """The manifest's record of a file just written through `write_file`."""
        return StoredFile(name=name, size=writer.size, sha256=writer.sha256, raw_size=raw_size,
                          encryption=self.encryption,
                          key_fingerprints=self.keys.fingerprints if self.encryption else [])

    @contextmanager
    def write_file(self, backup_id: str, name: str) -> Iterator[Any]:
        with self.inner.write_file(backup_id, name) as stored:
            if not self.keys.recipients:
                yield stored
                return
            writer = _SealingWriter(stored, self.keys.recipients)
            try:
                yield writer
            except BaseException:
                writer.encrypting.close_quietly()
                raise
            writer.encrypting.close()

    def store_file(self, path: Path, backup_id: str, name: str) -> StoredFile:
        if not self.keys.recipients:
            return self.inner.store_file(path, backup_id, name)
        with open(path, "rb") as src, self.write_file(backup_id, name) as out:
            shutil.copyfileobj(src, out, CHUNK)
        path.unlink()
        return self.stored_file(name, out)

    def open_plain(self, backup_id: str, file: StoredFile) -> BinaryIO:
        """The file's plaintext (still compressed); the stored bytes are checked against the
        manifest's sha256 and size when the end is read (IntegrityError naming the file)."""
        label = f"{self.inner.location(backup_id)}/{file.name}"
        checked = CheckedReader(self.inner.open_file(backup_id, file.name), file, label)
        if not file.encryption:
            return checked  # type: ignore[return-value]
        if file.encryption != sealing.AGE:
            raise IntegrityError(f"{label}: unknown encryption {file.encryption!r}")
        return sealing.DecryptingReader(checked, self.keys.identities(), label)  # type: ignore[arg-type,return-value]

    # -- manifests: signed in, checked out -------------------------------------------------

    def _sign(self, manifest: bytes) -> bytes:
        return sealing.sign_manifest(manifest, self.keys.mac_keys[0]) if self.keys.mac_keys else manifest

    def read_manifest(self, backup_id: str) -> bytes | None:
        data = self.inner.read_manifest(backup_id)
        if data is None or not self.keys.mac_keys:
            return data
        return sealing.check_manifest(data, self.keys.mac_keys, f"{self.inner.location(backup_id)}/{MANIFEST}")

    def finish_backup(self, backup_id: str, manifest: bytes) -> None:
        self.inner.finish_backup(backup_id, self._sign(manifest))

    def write_manifest(self, backup_id: str, manifest: bytes) -> None:
        self.inner.write_manifest(backup_id, self._sign(manifest))

    def copy_from(self, source: Storage, backup_id: str, file: StoredFile) -> str:
        return self.inner.copy_from(getattr(source, "inner", source), backup_id, file)

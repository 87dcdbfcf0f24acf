"""The archive side of the content proof, kept per stored dump on this host.

The proof (content_check.py) reads the archive as SQL (`pg_restore -f -`), hashes it entry by
entry, and compares those hashes with pg_dump's of the restored database. That side depends on
nothing but the archive's bytes, whether owners and grants are compared, and the pg_restore that
wrote the SQL. So a dump proven once on this host (by the verify drill that follows each backup,
or by an earlier restore) need not be read as SQL again: on the 2-core benchmark machine that
read was about 2.3 CPU-seconds of a 1 GB restore (pg_restore 1.1, hashing 1.2), taken from the
shadow restore it runs beside. The shadow's side is always read: it is what is being proven.

One file per stored dump and variant, under the pgkeeper home (directory 0700, files 0600), named
by the sha256 of the stored bytes (which the fetch proves before anything is restored from
them), the owners flag and the pg_restore binary's identity (size and mtime: a package update
may change the SQL it writes). Written only from a complete read, atomically; a file that does
not parse or names another dump is ignored and read again. What it holds (hashes of the SQL of
each entry) says nothing the database on this host does not. The newest KEEP files are kept
(restores and drills take recent backups; a schema of many thousand objects makes files of MBs).

Not Prefect's task cache: its results are pickled by default, so a file in a cache directory
would be code the proof runs; here it is JSON, read as data. A wrong file makes the proof fail
(its hashes do not match the shadow); to make a wrong shadow pass, it would have to be written
to match that shadow, which takes this OS user's rights, and those reach the database anyway.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pgkeeper import pgtools
from pgkeeper.home import pgkeeper_home

FORMAT = 1
KEEP = 16


@dataclass(frozen=True)
class DigestKey:
    """Which archive side: the stored dump (its sha256) read with or without owners and grants."""

    dump_sha256: str
    owners: bool

    def file_name(self) -> str:
        tool = Path(pgtools.tool("pg_restore")).stat()
        return f"{self.dump_sha256}-{'owners' if self.owners else 'no-owners'}-{tool.st_size}-{tool.st_mtime_ns}.json"


def _directory() -> Path:
    path = pgkeeper_home() / "archive-digests"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def load(key: DigestKey) -> tuple[dict[str, str], dict[str, str]] | None:
    """The archive's (schema, data) entry hashes kept for `key`, or None."""
    try:
        kept = json.loads((_directory() / key.file_name()).read_text())
        if kept.get("format") != FORMAT or kept.get("dump_sha256") != key.dump_sha256 \
                or kept.get("owners") != key.owners:
            return None
        schema, data = kept["schema"], kept["data"]
        if not (isinstance(schema, dict) and isinstance(data, dict) and schema):
            return None
        return schema, data
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def save(key: DigestKey, schema: dict[str, str], data: dict[str, str]) -> None:
    """Keep the hashes of a complete read (best effort: a cache that cannot be written is no error)."""
    try:
        directory = _directory()
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")  # mode 0600
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "dump_sha256": key.dump_sha256, "owners": key.owners,
                       "schema": schema, "data": data}, f)
        os.replace(tmp, directory / key.file_name())
        _prune(directory)
    except OSError:
        pass


def _prune(directory: Path) -> None:
    files = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP:]:
        old.unlink(missing_ok=True)
    for tmp in directory.glob(".tmp-*"):  # left by a writer killed mid-write
        if tmp.stat().st_mtime < time.time() - 3600:
            tmp.unlink(missing_ok=True)


def forget(dump_sha256: str) -> None:
    """Remove what is kept for a stored dump (every variant): its next proof reads the archive."""
    for kept in _directory().glob(f"{dump_sha256}-*.json"):
        kept.unlink(missing_ok=True)

"""Quick verification of a stored dump: checksum, decompression, pg_restore reads its TOC."""

from __future__ import annotations

import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper import pgtools
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.errors import IntegrityError
from pgkeeper.fmt import plural
from pgkeeper.manifest import StoredFile
from pgkeeper.sealing import AGE_MAGIC
from pgkeeper.storage.streams import HashingReader, check_digest
from pgkeeper.tasks.checksum import checked_chunks
from pgkeeper.tasks.policy import RETRYABLE


class UnreadableDump(IntegrityError):
    """The stored bytes are intact (checksum matched) but pg_restore cannot read the archive."""


class QuickCheck(BaseModel):
    raw_size: int
    toc: dict[str, int]  # TOC entry kind -> count, e.g. {"TABLE DATA": 5, "INDEX": 4}
    checks: dict[str, str]


def toc_kinds(listing: str) -> Counter[str]:
    """Count `pg_restore --list` entries by kind ("TABLE DATA", "INDEX", ...)."""
    kinds: Counter[str] = Counter()
    for line in listing.splitlines():
        if not line or line.startswith(";"):
            continue
        # "3345; 0 16390 TABLE DATA public company postgres"
        parts = line.split(" ", 3)
        if len(parts) < 4:
            continue
        rest = parts[3]
        for kind in ("TABLE DATA", "SEQUENCE SET", "FK CONSTRAINT", "CONSTRAINT", "INDEX", "TABLE",
                     "SEQUENCE", "EXTENSION", "SCHEMA", "VIEW", "FUNCTION"):
            if rest.startswith(kind + " "):
                kinds[kind] += 1
                break
    return kinds


@contextmanager
def toc_listing(label: str) -> Iterator[tuple[Callable[[bytes], None], Callable[[], Counter[str]]]]:
    """(feed, kinds): pg_restore --list reading an archive fed in chunks. pg_restore stops
    reading once it has the table of contents; later chunks are dropped. kinds() is the count
    of TOC entries by kind once everything was fed."""
    with tempfile.TemporaryFile() as listing, tempfile.TemporaryFile() as err, pgtools.child(
        [pgtools.tool("pg_restore"), "--list"], stdin=subprocess.PIPE, stdout=listing, stderr=err,
        timeout=3600,
    ) as restore:
        assert restore.proc.stdin is not None
        stdin = restore.proc.stdin
        state = {"open": True}

        def feed(chunk: bytes) -> None:
            if state["open"]:
                try:
                    stdin.write(chunk)
                except BrokenPipeError:
                    state["open"] = False

        def kinds() -> Counter[str]:
            try:
                stdin.close()
            except BrokenPipeError:
                pass
            err.seek(0)
            try:
                restore.check(err.read())
            except pgtools.ToolFailed as exc:
                raise UnreadableDump(f"{label}: pg_restore cannot read it ({exc})") from None
            listing.seek(0)
            return toc_kinds(listing.read().decode("utf-8", "replace"))

        yield feed, kinds


def read_dump_toc(repo: BackupRepository, backup_id: str, file: StoredFile, compression: str,
                  source: str = "local") -> QuickCheck:
    """One pass over the stored file: hash it, decompress it, and let pg_restore list it."""
    storage = repo.storage(source)
    label = f"{backup_id}/{file.name}"
    with toc_listing(label) as (feed, listed), storage.open_plain(backup_id, file) as stream:
        raw = checked_chunks(stream, compression, label, feed)
        kinds = listed()
    if file.raw_size is not None and raw != file.raw_size:
        raise IntegrityError(f"{label}: decompressed to {raw} bytes, manifest says {file.raw_size}")
    return QuickCheck(raw_size=raw, toc=dict(kinds), checks={
        "integrity": f"PASS sha256 {file.sha256[:16]}..., decompressed {raw} bytes",
        "format": f"PASS {plural(kinds['TABLE DATA'], 'table')} with data in the table of contents",
    })


def check_sealed_dump(repo: BackupRepository, backup_id: str, file: StoredFile, toc: dict[str, int]) -> QuickCheck:
    """On a host that holds only the public key: the stored ciphertext reads back with the
    manifest's sha256 and size, and the table of contents is the one pg_restore listed while
    the dump was written. Decryption is proven by the verify drill, where the private key is."""
    with repo.storage().open_file(backup_id, file.name) as f:
        reader = HashingReader(f)
        head = reader.read(len(AGE_MAGIC))
        reader.drain()
    check_digest(reader, file.size, file.sha256, f"{backup_id}/{file.name}")
    if head != AGE_MAGIC:
        raise IntegrityError(f"{backup_id}/{file.name}: the manifest says age-encrypted, the file is not")
    kinds = Counter(toc)
    return QuickCheck(raw_size=file.raw_size or 0, toc=dict(kinds), checks={
        "integrity": f"PASS sha256 {file.sha256[:16]}... of the encrypted file "
                     f"(age, key {', '.join(file.key_fingerprints)})",
        "format": f"PASS {plural(kinds['TABLE DATA'], 'table')} with data in the table of contents "
                  "(read while dumping; this host cannot decrypt)",
    })


@task(name="quick-verify", cache_policy=NO_CACHE, **RETRYABLE)
def quick_verify(repo: BackupRepository, backup_id: str, file: StoredFile, compression: str,
                 expected_tables: int, toc_at_dump: dict[str, int] | None = None) -> QuickCheck:
    """The stored dump decompresses, its hash matches, and it holds every table we counted."""
    if file.encryption and toc_at_dump is not None and not repo.storage().keys.identities():
        check = check_sealed_dump(repo, backup_id, file, toc_at_dump)
    else:
        check = read_dump_toc(repo, backup_id, file, compression)
    found = check.toc.get("TABLE DATA", 0)
    if found != expected_tables:
        raise IntegrityError(f"{backup_id}: the dump holds {found} tables, the snapshot counted "
                             f"{expected_tables}")
    get_run_logger().info("verified %s: %s", backup_id, "; ".join(check.checks.values()))
    return check

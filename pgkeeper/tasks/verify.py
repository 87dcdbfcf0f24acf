"""Quick verification of a stored dump: checksum, decompression, pg_restore reads its TOC."""

from __future__ import annotations

from collections import Counter

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.codec import checked_chunks
from pgkeeper.dumpstream import toc_kinds as toc_kinds
from pgkeeper.dumpstream import toc_listing
from pgkeeper.errors import IntegrityError, UnreadableDump
from pgkeeper.fmt import plural
from pgkeeper.manifest import StoredFile
from pgkeeper.sealing import AGE_MAGIC
from pgkeeper.storage.streams import HashingReader, check_digest
from pgkeeper.tasks.policy import RETRYABLE


class QuickCheck(BaseModel):
    raw_size: int
    toc: dict[str, int]  # TOC entry kind -> count, e.g. {"TABLE DATA": 5, "INDEX": 4}
    checks: dict[str, str]


def check_table_count(toc: dict[str, int], expected: int, where: str = "") -> int:
    """The tables with data in a dump's table of contents, which must be as many as the backup's
    snapshot counted (its manifest's table list); UnreadableDump otherwise."""
    found = toc.get("TABLE DATA", 0)
    if found != expected:
        raise UnreadableDump(f"{where + ': ' if where else ''}the dump holds {found} tables, "
                             f"its manifest counted {expected}")
    return found


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


def stored_bytes_match(repo: BackupRepository, backup_id: str, file: StoredFile, head: int = 0) -> bytes:
    """Read the stored file back: its sha256 and size must be the manifest's (IntegrityError
    otherwise); returns its first `head` bytes."""
    with repo.storage().open_file(backup_id, file.name) as f:
        reader = HashingReader(f)
        first = reader.read(head) if head else b""
        reader.drain()
    check_digest(reader, file.size, file.sha256, f"{backup_id}/{file.name}")
    return first


def check_sealed_dump(repo: BackupRepository, backup_id: str, file: StoredFile, toc: dict[str, int]) -> QuickCheck:
    """On a host that holds only the public key: the stored ciphertext reads back with the
    manifest's sha256 and size, and the table of contents is the one pg_restore listed while
    the dump was written. Decryption is proven by the verify drill, where the private key is."""
    head = stored_bytes_match(repo, backup_id, file, len(AGE_MAGIC))
    if head != AGE_MAGIC:
        raise IntegrityError(f"{backup_id}/{file.name}: the manifest says age-encrypted, the file is not")
    kinds = Counter(toc)
    return QuickCheck(raw_size=file.raw_size or 0, toc=dict(kinds), checks={
        "integrity": f"PASS sha256 {file.sha256[:16]}... of the encrypted file "
                     f"(age, key {', '.join(file.key_fingerprints)})",
        "format": f"PASS {plural(kinds['TABLE DATA'], 'table')} with data in the table of contents "
                  "(read while dumping; this host cannot decrypt)",
    })


def check_streamed_dump(repo: BackupRepository, backup_id: str, file: StoredFile, toc: dict[str, int],
                        decompressed: int) -> QuickCheck:
    """A dump whose stored bytes were decompressed as they were written (dumpstream, zstd with its
    frame checksum: to exactly what pg_dump wrote, whose table of contents pg_restore listed on
    the way): the file read back must be those bytes, by sha256 and size. Read back and hashed,
    not decompressed a second time: the same proof as decompressing the file read back, without
    the second pass over the raw dump after the stream."""
    label = f"{backup_id}/{file.name}"
    stored_bytes_match(repo, backup_id, file)
    if file.raw_size is not None and decompressed != file.raw_size:
        raise IntegrityError(f"{label}: decompressed to {decompressed} bytes, manifest says {file.raw_size}")
    kinds = Counter(toc)
    return QuickCheck(raw_size=decompressed, toc=dict(kinds), checks={
        "integrity": f"PASS sha256 {file.sha256[:16]}..., decompressed {decompressed} bytes "
                     "(as written, zstd content checksum)",
        "format": f"PASS {plural(kinds['TABLE DATA'], 'table')} with data in the table of contents "
                  "(read while dumping)",
    })


@task(name="quick-verify", cache_policy=NO_CACHE, **RETRYABLE)
def quick_verify(repo: BackupRepository, backup_id: str, file: StoredFile, compression: str,
                 expected_tables: int, toc_at_dump: dict[str, int] | None = None,
                 decompressed: int | None = None) -> QuickCheck:
    """The stored dump decompresses, its hash matches, and it holds every table we counted.
    `decompressed`: what the dump's stored bytes decompressed to while they were written."""
    if decompressed is not None and toc_at_dump is not None:  # zstd, not encrypted: dumpstream checked it
        check = check_streamed_dump(repo, backup_id, file, toc_at_dump, decompressed)
    elif file.encryption and toc_at_dump is not None and not repo.storage().keys.identities():
        check = check_sealed_dump(repo, backup_id, file, toc_at_dump)
    else:
        check = read_dump_toc(repo, backup_id, file, compression)
    check_table_count(check.toc, expected_tables, backup_id)
    get_run_logger().info("verified %s: %s", backup_id, "; ".join(check.checks.values()))
    return check

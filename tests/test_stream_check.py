"""The dump's stored bytes are decompressed while they are written (codec.StreamCheck), and
quick-verify reads the stored file back against them: real pg_dump, real files, no stand-ins."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import zstandard

from pgkeeper import codec
from pgkeeper.errors import IntegrityError
from pgkeeper.flows.backup import backup


def compressed_pieces(data: bytes) -> list[bytes]:
    """What the dump's loop hands to storage: one piece per compress() that gave any, then flush()."""
    comp = codec.compressor("zstd", 1, checksum=True)
    pieces = [p for i in range(0, len(data), codec.CHUNK) if (p := comp.compress(data[i:i + codec.CHUNK]))]
    return [*pieces, comp.flush()]


def checked(pieces: list[bytes], raw: int) -> int:
    check = codec.StreamCheck()
    for piece in pieces:
        check.feed(piece)
    return check.finish(raw)


def test_the_check_gives_the_decompressed_size_and_finds_corruption_and_truncation():
    data = os.urandom(3 * codec.CHUNK) + b" " * (40 * codec.CHUNK) + b"end"
    pieces = compressed_pieces(data)
    assert checked(pieces, len(data)) == len(data)
    assert zstandard.get_frame_parameters(pieces[0]).has_checksum  # the frame carries its content's XXH64

    whole = b"".join(pieces)
    flipped = whole[:-1] + bytes([whole[-1] ^ 1])  # the checksum's last byte
    with pytest.raises(ValueError, match="corrupt"):
        checked([flipped], len(data))
    with pytest.raises(ValueError, match="truncated"):
        checked([whole[:-7]], len(data))


def test_a_corrupt_stream_never_blocks_the_writer():
    # Far more pieces than the thread's queue holds, all after the corruption: feed() returns.
    check = codec.StreamCheck()
    check.feed(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)
    for _ in range(codec.StreamCheck.QUEUE_PIECES * 4):
        check.feed(b"x" * 1024)
    with pytest.raises(ValueError, match="corrupt"):
        check.finish(64)


def test_quick_verify_reads_the_stored_file_back_against_what_was_checked(pg, conn, repo):
    from pgkeeper.tasks.verify import check_streamed_dump

    suffix = uuid.uuid4().hex[:8]
    conn.save(f"db-{suffix}", overwrite=True)
    repo.save(f"repo-{suffix}", overwrite=True)
    manifest = backup(connection_block=f"db-{suffix}", repository_block=f"repo-{suffix}")

    dump = manifest.files[0]
    integrity = manifest.verifications[0].checks["integrity"]
    assert f"decompressed {dump.raw_size} bytes (as written, zstd content checksum)" in integrity
    stored = Path(repo.path) / "backups" / manifest.backup_id / dump.name
    assert zstandard.get_frame_parameters(stored.read_bytes()[:18]).has_checksum

    # The same check on the file as it is now passes; a byte changed on disk since is found.
    toc = {"TABLE DATA": manifest.objects["tables"]}
    assert check_streamed_dump(repo, manifest.backup_id, dump, toc, dump.raw_size).raw_size == dump.raw_size
    with pytest.raises(IntegrityError, match="decompressed to"):
        check_streamed_dump(repo, manifest.backup_id, dump, toc, dump.raw_size - 1)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.chmod(0o600)
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        check_streamed_dump(repo, manifest.backup_id, dump, toc, dump.raw_size)

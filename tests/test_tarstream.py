"""The streaming tar checker (pgkeeper.tarstream) on tars built here: what it passes on, what it
hashes, what it holds back; any chunking gives the same result. (The manifests pg_basebackup
writes are checked by the base backup tests: tests/test_base_backup*.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import crc32c
import pytest

from pgkeeper.errors import IntegrityError
from pgkeeper.tarstream import TarChecker, check_against_manifest, manifest_checksum_ok


def pg_crc(data: bytes, byteorder: str = "little") -> str:
    """A file's CRC-32C as backup_manifest writes it: the value's bytes in the server's order."""
    return crc32c.crc32c(data).to_bytes(4, byteorder).hex()  # type: ignore[arg-type]


def pg_manifest(files: dict[str, bytes], checksum: str = "CRC32C", byteorder: str = "little") -> bytes:
    """A backup_manifest in PostgreSQL's layout, its checksum over all lines but the last."""
    lines = ['{ "PostgreSQL-Backup-Manifest-Version": 1,', '"Files": [']
    digest = pg_crc if checksum == "CRC32C" else lambda d, _order: hashlib.sha256(d).hexdigest()
    entries = [json.dumps({"Path": p, "Size": len(d), "Checksum-Algorithm": checksum,
                           "Checksum": digest(d, byteorder)}) for p, d in files.items()]
    lines.append(",\n".join(entries))
    lines.append("],")
    lines.append('"WAL-Ranges": [{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }],')
    body = ("\n".join(lines) + "\n").encode()
    return body + f'"Manifest-Checksum": "{hashlib.sha256(body).hexdigest()}"}}\n'.encode()


def build_tar(members: dict[str, bytes], manifest: bytes | None, long_name: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        d = tarfile.TarInfo("base")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if manifest is not None:
            info = tarfile.TarInfo("backup_manifest")
            info.size = len(manifest)
            tf.addfile(info, io.BytesIO(manifest))
    return buf.getvalue()


FILES = {"PG_VERSION": b"15\n", "base/1/1259": bytes(range(256)) * 40, "global/pg_control": b"x" * 8192,
         "base/5/" + "n" * 120: b"long name", "empty": b""}


def run(data: bytes, chunk: int) -> tuple[TarChecker, bytes]:
    checker = TarChecker()
    out = bytearray()
    for i in range(0, len(data), chunk):
        for part in checker.feed(data[i:i + chunk]):
            out += part
    return checker, bytes(out)


@pytest.mark.parametrize("chunk", [1, 7, 511, 512, 513, 4096, 1 << 20])
def test_any_chunking_hashes_every_file_and_holds_back_the_manifest(chunk: int) -> None:
    manifest = pg_manifest(FILES)
    checker, stored = run(build_tar(FILES, manifest), chunk)
    assert bytes(checker.manifest) == manifest
    assert check_against_manifest(checker) == len(FILES)
    with tarfile.open(fileobj=io.BytesIO(stored), mode="r:") as tf:
        names = tf.getnames()
        assert "backup_manifest" not in names
        assert tf.extractfile("base/1/1259").read() == FILES["base/1/1259"]  # type: ignore[union-attr]
    assert set(names) == set(FILES) | {"base"}
    assert checker.raw_size == len(stored)


def test_a_changed_byte_a_missing_file_and_an_extra_file_are_refused() -> None:
    manifest = pg_manifest(FILES)
    changed = dict(FILES, **{"global/pg_control": b"y" * 8192})
    checker, _ = run(build_tar(changed, manifest), 4096)
    with pytest.raises(IntegrityError, match="global/pg_control: checksum mismatch"):
        check_against_manifest(checker)
    missing = {k: v for k, v in FILES.items() if k != "PG_VERSION"}
    with pytest.raises(IntegrityError, match="PG_VERSION is listed in backup_manifest but not in the backup"):
        check_against_manifest(run(build_tar(missing, manifest), 4096)[0])
    with pytest.raises(IntegrityError, match="stray is in the backup but not in backup_manifest"):
        check_against_manifest(run(build_tar(dict(FILES, stray=b"1"), manifest), 4096)[0])


def test_a_tampered_manifest_a_missing_manifest_and_a_cut_stream_are_refused() -> None:
    manifest = pg_manifest(FILES)
    assert manifest_checksum_ok(manifest)
    tampered = manifest.replace(b'"Size": 3', b'"Size": 4')
    assert not manifest_checksum_ok(tampered)
    with pytest.raises(IntegrityError, match="does not match its own checksum"):
        check_against_manifest(run(build_tar(FILES, tampered), 4096)[0])
    with pytest.raises(IntegrityError, match="has no backup_manifest"):
        check_against_manifest(run(build_tar(FILES, None), 4096)[0])
    whole = build_tar(FILES, manifest)
    with pytest.raises(IntegrityError, match="ended before its end-of-archive marker"):
        check_against_manifest(run(whole[:len(whole) // 2], 4096)[0])


def test_the_crc_is_postgresqls_in_either_byte_order_and_no_other_algorithm_is_taken() -> None:
    assert pg_crc(b"123456789", "big") == "e3069283"  # CRC-32C's published check value
    big_endian_server = pg_manifest(FILES, byteorder="big")
    assert check_against_manifest(run(build_tar(FILES, big_endian_server), 4096)[0]) == len(FILES)
    sha = pg_manifest(FILES, checksum="SHA256")
    with pytest.raises(IntegrityError, match="backup_manifest has no CRC32C checksum for "):
        check_against_manifest(run(build_tar(FILES, sha), 4096)[0])

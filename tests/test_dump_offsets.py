"""Data offsets written into the TOC of an archive pg_dump wrote to a pipe (pgkeeper/dumpoffsets.py):
the patched file is the one `pg_dump -Fc -f FILE` writes, lists and restores the same, and an
archive the walk cannot place (cut short, offsets already set) is left untouched."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgkeeper import pgtools
from pgkeeper.dumpoffsets import _read_head, _Reader, add_data_offsets
from pgkeeper.localcluster import LocalCluster
from tests.helpers import create_database, drop_database

DB = "offsets_src"


def _schema(c: psycopg.Connection) -> None:
    # Many tables, one empty, rows whose chunk lengths have zero bytes (256, 65536), text with
    # multibyte characters, and large objects holding runs of NUL bytes (their blocks are walked).
    for i in range(40):
        c.execute(f"CREATE TABLE t{i} (id int PRIMARY KEY, v text)")
        c.execute(f"INSERT INTO t{i} SELECT g, repeat('x', {i}) || g FROM generate_series(1, {i * 30}) g")
    c.execute("CREATE TABLE empty_one (id int)")
    c.execute("CREATE TABLE odd (id int, v text, b bytea)")
    c.execute("INSERT INTO odd VALUES (1, repeat('a', 250), '\\x0000000000000000'), "
              "(2, repeat('é', 40000), NULL), (3, 'tab\there', decode(repeat('00', 3000), 'hex'))")
    c.execute("SELECT lo_from_bytea(0, decode(repeat('00', 70000), 'hex'))")
    c.execute("SELECT lo_from_bytea(0, '\\x01000000000000')")
    c.execute("SELECT lo_from_bytea(0, '')")
    c.execute("CREATE TABLE after_blobs (id int)")
    c.execute("INSERT INTO after_blobs VALUES (7)")


@pytest.fixture(scope="module")
def source(pg: LocalCluster) -> Iterator[LocalCluster]:
    create_database(pg, DB)
    try:
        with psycopg.connect(pg.conninfo(DB), autocommit=True) as c:
            _schema(c)
        yield pg
    finally:
        drop_database(pg, DB)


def _piped_dump(pg: LocalCluster, dest: Path, *options: str) -> Path:
    """pg_dump -Fc to a pipe, as pgkeeper runs it: no data offsets in its TOC."""
    with open(dest, "wb") as out:
        proc = subprocess.Popen([pgtools.tool("pg_dump"), "-w", "-Fc", *options, DB],
                                env=pg.libpq_env(DB), stdout=subprocess.PIPE)
        assert proc.stdout is not None
        for piece in iter(lambda: proc.stdout.read(1 << 16), b""):
            out.write(piece)
        assert proc.wait() == 0
    return dest


def _listing(path: Path) -> list[str]:
    out = subprocess.run([pgtools.tool("pg_restore"), "--list", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return out.splitlines()


def _plain_dump(pg: LocalCluster, db: str) -> list[str]:
    out = subprocess.run([pgtools.tool("pg_dump"), "-w", db], env=pg.libpq_env(db), check=True,
                         capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict"))]


def _without_creation_time(data: bytes) -> bytes:
    """The archive without its header's creation time (seven ints after the compression field)."""
    r = _Reader(data)
    _read_head(r)
    r.pos = 5 + 3 + 3  # magic, version, intSize/offSize/format
    r.int()  # compression (an int before archive version 1.15)
    start = r.pos
    for _ in range(7):
        r.int()
    return data[:start] + data[r.pos:]


@pytest.mark.parametrize("window", [64 << 20, 4096, 7])
def test_patched_archive_is_what_pg_dump_writes_to_a_file(source: LocalCluster, tmp_path: Path, window: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Small windows: each block's end is searched, and released, across many windows.
    monkeypatch.setattr("pgkeeper.dumpoffsets.WINDOW", window)
    piped = _piped_dump(source, tmp_path / "piped.dump", "-Z0")
    before = piped.read_bytes()
    listing = _listing(piped)
    done = add_data_offsets(piped)
    assert done is not None and done.entries >= 43  # 40 + empty + odd + after_blobs (+ blobs)
    after = piped.read_bytes()
    assert len(after) == len(before) and after != before
    assert _listing(piped) == listing  # pg_restore -l reads the same table of contents
    direct = tmp_path / "direct.dump"
    subprocess.run([pgtools.tool("pg_dump"), "-w", "-Fc", "-Z0", "-f", str(direct), DB],
                   env=source.libpq_env(DB), check=True)
    assert _without_creation_time(after) == _without_creation_time(direct.read_bytes())
    assert add_data_offsets(direct) is None  # offsets already set: nothing to do, untouched


@pytest.mark.parametrize("compression", ["-Z0", "-Z6"])
def test_parallel_restore_of_the_patched_archive_gives_back_the_source(source: LocalCluster, tmp_path: Path,
                                                                       compression: str) -> None:
    piped = _piped_dump(source, tmp_path / "piped.dump", compression)
    assert add_data_offsets(piped) is not None
    copy = f"{DB}_copy"
    create_database(source, copy)
    try:
        subprocess.run([pgtools.tool("pg_restore"), "-w", "--exit-on-error", "-j2", f"--dbname={copy}",
                        str(piped)], env=source.libpq_env(copy), check=True, capture_output=True)
        assert _plain_dump(source, copy) == _plain_dump(source, DB)
        with psycopg.connect(source.conninfo(copy)) as c:
            sizes = c.execute("SELECT length(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1").fetchall()
        assert sizes == [(0,), (7,), (70000,)]
    finally:
        drop_database(source, copy)


def test_an_archive_cut_short_or_altered_is_left_untouched(source: LocalCluster, tmp_path: Path) -> None:
    whole = _piped_dump(source, tmp_path / "piped.dump", "-Z0").read_bytes()
    cut = tmp_path / "cut.dump"
    for length in (len(whole) - 3, len(whole) // 2, 200, 10):
        cut.write_bytes(whole[:length])
        assert add_data_offsets(cut) is None
        assert cut.read_bytes() == whole[:length]
    # The last block's end marker altered: the walk runs off the end, nothing is written.
    altered = bytearray(whole)
    altered[-2] = 1
    bad = tmp_path / "bad.dump"
    bad.write_bytes(bytes(altered))
    assert add_data_offsets(bad) is None
    assert bad.read_bytes() == bytes(altered)
    not_a_dump = tmp_path / "plain.sql"
    not_a_dump.write_bytes(b"-- PostgreSQL database dump\n" * 10)
    assert add_data_offsets(not_a_dump) is None

"""The archive side of the content proof, kept per stored dump on this host (archive_digests.py):
a restore leaves it, the next proof of the same dump takes it instead of reading the archive as
SQL again, and it never makes a proof pass that a fresh read would fail."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tests.helpers import drop_database
from tests.test_restore import env, plain_dump  # noqa: F401


def _kept_files(sha256: str) -> list[Path]:
    from pgkeeper.archive_digests import _directory

    return sorted(_directory().glob(f"{sha256}-*.json"))


def test_a_kept_archive_side_proves_as_a_fresh_read_does(pg, crm_db, conn, env, repo, tmp_path: Path):  # noqa: F811
    from pgkeeper.content_check import ArchiveReading, prove_content
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore
    from pgkeeper.storage.local import LocalStorage
    from pgkeeper.workfile import materialize_dump

    copy = f"{crm_db}_kept"
    try:
        m = backup()
        sha = m.dump_file.sha256
        assert _kept_files(sha) == []
        restore(m.backup_id, mode="new", target=copy)

        # The restore kept its read: one file, 0600, in a 0700 directory, naming the dump.
        [kept] = _kept_files(sha)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
        assert json.loads(kept.read_text())["dump_sha256"] == sha

        # The next restore of the same dump proves with the kept side (the file is not written
        # again), and what it gives back is the original, in pg_dump's own words.
        written = kept.stat().st_mtime_ns
        again = f"{crm_db}_kept2"
        try:
            restore(m.backup_id, mode="new", target=again)
            assert kept.stat().st_mtime_ns == written
            assert plain_dump(pg, again) == plain_dump(pg, crm_db)
        finally:
            drop_database(pg, again)

        archive = tmp_path / "archive.dump"
        with LocalStorage(Path(repo.path)).open_plain(m.backup_id, m.dump_file) as stream:
            materialize_dump(stream, m.dump_file, m.compression, archive, "test")
        fresh = ArchiveReading(archive)
        reused = ArchiveReading(archive, kept=sha)
        assert reused.reused and not fresh.reused
        assert reused.result() == fresh.result()

        def differences(reading: ArchiveReading) -> list[str]:
            return prove_content(conn, copy, archive, m.database_properties, m.dump_settings, reading=reading)

        assert differences(ArchiveReading(archive, kept=sha)) == []
        # A restored copy that differs is caught with the kept side exactly as with a fresh read.
        with psycopg.connect(pg.conninfo(copy), autocommit=True) as c:
            c.execute("UPDATE company SET name = name || 'x' WHERE id = (SELECT min(id) FROM company)")
        changed = "data of company; Type: TABLE DATA; Schema: public: differs from the backup"
        assert differences(ArchiveReading(archive, kept=sha)) == [changed]
        assert differences(ArchiveReading(archive)) == [changed]

        # A kept file that was tampered with can only make a proof fail, never pass: the changed
        # copy still differs, and now the faithful entry the file lies about is named too.
        doc = json.loads(kept.read_text())
        key = "Data for Name: contact; Type: TABLE DATA; Schema: public"
        doc["data"][key] = "0" * 64
        kept.write_text(json.dumps(doc))
        found = differences(ArchiveReading(archive, kept=sha))
        assert changed in found
        assert "data of contact; Type: TABLE DATA; Schema: public: differs from the backup" in found

        # A file that does not parse, or names another dump, is not used: the archive is read again
        # (and the complete read is kept anew).
        for bad in ("{not json", json.dumps({**doc, "dump_sha256": "f" * 64})):
            kept.write_text(bad)
            again = ArchiveReading(archive, kept=sha)
            assert not again.reused
            assert again.result() == fresh.result()
        assert ArchiveReading(archive, kept=sha).reused
    finally:
        drop_database(pg, copy)


def test_only_the_newest_files_are_kept(tmp_path: Path, monkeypatch):
    from pgkeeper import archive_digests
    from pgkeeper.archive_digests import DigestKey, load, save

    monkeypatch.setenv("PGKEEPER_HOME", str(tmp_path))
    monkeypatch.setattr(archive_digests, "KEEP", 3)
    keys = [DigestKey(f"{i:064x}", owners=True) for i in range(5)]
    for i, key in enumerate(keys):
        save(key, {"Name: t; Type: TABLE; Schema: public": str(i)}, {})
    assert [load(k) is not None for k in keys] == [False, False, True, True, True]
    assert load(DigestKey(keys[4].dump_sha256, owners=False)) is None  # the other variant: not kept


WRITER = """
import sys
from pgkeeper.archive_digests import DigestKey, save
entries = {f"Data for Name: t{i}; Type: TABLE DATA; Schema: public": "%064x" % i for i in range(50000)}
print("ready", flush=True)
while True:
    save(DigestKey(sys.argv[1], owners=True), {"Name: t; Type: TABLE; Schema: public": "1"}, entries)
"""


def test_a_writer_killed_at_any_point_leaves_no_half_file(tmp_path: Path, monkeypatch):
    """SIGKILL a process that keeps writing the kept side: the file under its real name is
    always whole (or absent), a half-written temporary file is never read, and it is removed
    once it is old."""
    from pgkeeper.archive_digests import DigestKey, _directory, load, save

    monkeypatch.setenv("PGKEEPER_HOME", str(tmp_path))
    key = DigestKey("a" * 64, owners=True)
    for _ in range(4):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, key.dump_sha256], env={**os.environ},
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0.05, 1.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        found = load(key)
        assert found is None or (len(found[1]) == 50000 and found[0] == {"Name: t; Type: TABLE; Schema: public": "1"})
    leftovers = list(_directory().glob(".tmp-*"))
    assert leftovers, "no writer was killed mid-write"
    hour_ago = time.time() - 7200
    for tmp in leftovers:
        os.utime(tmp, (hour_ago, hour_ago))
    save(DigestKey("b" * 64, owners=True), {"Name: t; Type: TABLE; Schema: public": "1"}, {})
    assert list(_directory().glob(".tmp-*")) == []

"""The archive side of the content proof, kept per stored dump on this host (archive_digests.py):
a restore leaves it, the next proof of the same dump takes it instead of reading the archive as
SQL again, and it never makes a proof pass that a fresh read would fail."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import psycopg

from tests.helpers import drop_database
from tests.test_restore import env  # noqa: F401


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

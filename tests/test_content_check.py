"""Verify proves content, not counts: a restored copy that differs from the backup in one value,
one grant or one setting is caught, and the difference is named."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.helpers import drop_database
from tests.test_restore import env  # noqa: F401


def test_each_injected_difference_is_named(pg, crm_db, conn, env, repo, tmp_path: Path):  # noqa: F811
    from pgkeeper.content_check import prove_content
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore
    from pgkeeper.storage.local import LocalStorage
    from pgkeeper.workfile import materialize_dump

    reader = f"reader_{crm_db}"
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute(f"CREATE ROLE {reader}")
        c.execute(f"GRANT SELECT ON company TO {reader}")
        c.execute(f"ALTER DATABASE {crm_db} SET search_path = public, pg_catalog")
    copy = f"{crm_db}_copy"
    try:
        m = backup()
        restore(m.backup_id, mode="new", target=copy)
        archive = tmp_path / "archive.dump"
        with LocalStorage(Path(repo.path)).open_plain(m.backup_id, m.dump_file) as stream:
            materialize_dump(stream, m.dump_file, m.compression, archive, "test")

        def differences() -> list[str]:
            return prove_content(conn, copy, archive, m.database_properties, m.dump_settings)

        assert differences() == []  # the faithful copy: nothing to report
        with psycopg.connect(pg.conninfo(copy), autocommit=True) as c:
            c.execute("UPDATE company SET name = name || 'x' WHERE id = (SELECT min(id) FROM company)")
            c.execute(f"REVOKE SELECT ON company FROM {reader}")
            c.execute(f"ALTER DATABASE {copy} SET search_path = public")
        found = differences()
        assert "data of company; Type: TABLE DATA; Schema: public: differs from the backup" in found
        assert "schema of TABLE company; Type: ACL; Schema: public: missing from the restored database" in found
        assert any(line.startswith("database settings: expected ['search_path=public, pg_catalog']")
                   for line in found), found
        assert len(found) == 3, found
    finally:
        drop_database(pg, copy)
        with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
            c.execute(f"DROP OWNED BY {reader}")
            c.execute(f"DROP ROLE {reader}")



def test_entries_are_the_same_wherever_a_chunk_boundary_falls():
    from pgkeeper.content_check import EntryHashes

    text = (b"-- PostgreSQL database dump\n\n--\n-- Name: a; Type: TABLE; Schema: public; Owner: x\n--\n"
            b"CREATE TABLE a ();\n\n--\n-- Data for Name: a; Type: TABLE DATA; Schema: public; Owner: x\n--\n"
            b"COPY public.a FROM stdin;\n\\.\n")
    whole = EntryHashes()
    whole.feed(text)
    expected = whole.finish()
    assert set(expected) == {"Name: a; Type: TABLE; Schema: public",
                             "Data for Name: a; Type: TABLE DATA; Schema: public"}
    for cut in range(1, len(text)):
        split = EntryHashes()
        split.feed(text[:cut])
        split.feed(text[cut:])
        assert split.finish() == expected, cut


def test_two_pg_dumps_side_by_side_read_the_same_entries_as_one(pg, conn, monkeypatch):
    """The data side of the proof read by two pg_dump sessions (the heaviest tables, the rest)
    gives exactly the entries one pg_dump gives, odd table names and owned sequences included,
    and still sees a changed value in a heavy table."""
    from pgkeeper import content_check
    from pgkeeper.content_check import database_data_entries, database_entries, heavy_tables

    db = "split_read_check"
    drop_database(pg, db)
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {db}")
    try:
        with psycopg.connect(pg.conninfo(db), autocommit=True) as c:
            c.execute('CREATE TABLE "we.ird*" (id serial PRIMARY KEY, body text)')  # the heavy one
            c.execute('INSERT INTO "we.ird*" (body) SELECT repeat(md5(i::text), 4) FROM generate_series(1, 3000) i')
            c.execute("CREATE TABLE other (x int)")
            c.execute("INSERT INTO other SELECT generate_series(1, 1500)")
            c.execute("CREATE TABLE small (y text)")
            c.execute("INSERT INTO small SELECT md5(i::text) FROM generate_series(1, 1000) i")
        settings = {"TimeZone": "UTC"}
        assert heavy_tables(conn, db) == []  # small: one pg_dump
        monkeypatch.setattr(content_check, "SPLIT_MIN_BYTES", 0)
        assert heavy_tables(conn, db) == ['"public"."we.ird*"']
        one = database_entries(conn, db, "data", settings)
        assert database_data_entries(conn, db, settings) == one
        assert any("SEQUENCE SET" in k for k in one) and len(one) == 4, one  # 3 tables, 1 sequence
        with psycopg.connect(pg.conninfo(db), autocommit=True) as c:
            c.execute('UPDATE "we.ird*" SET body = body || \'x\' WHERE id = 2000')
        changed = database_data_entries(conn, db, settings)
        assert [k for k in one if one[k] != changed[k]] == \
            ["Data for Name: we.ird*; Type: TABLE DATA; Schema: public"]
    finally:
        drop_database(pg, db)

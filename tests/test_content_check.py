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
    from pgkeeper.tasks.pg_restore import materialize_dump

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

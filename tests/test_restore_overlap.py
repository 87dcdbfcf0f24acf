"""The content proof's read of the shadow's data runs beside pg_restore's post-data section
(pgrestore.py): the restored database is the same, a change made to the shadow after its
data section is still caught, and archives whose post-data could lock against the reader
(a materialized view's refresh, partitions) are restored and read as before."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.helpers import drop_database, table_fingerprints
from tests.test_restore import env, leftovers  # noqa: F401


def _archive(pg, db: str, path: Path) -> Path:
    from pgkeeper import pgtools

    with open(path, "wb") as out:  # through a pipe, as the backup writes it (no data offsets)
        dump = subprocess.Popen([pgtools.tool("pg_dump"), "-Fc", "-Z0", db], env={**os.environ, **pg.libpq_env(db)},
                                stdout=subprocess.PIPE)
        assert dump.stdout is not None
        while chunk := dump.stdout.read(1 << 20):
            out.write(chunk)
        assert dump.wait() == 0
    return path


def _section_ids(path: Path, section: str) -> set[str]:
    from pgkeeper import pgtools

    out = pgtools.run([pgtools.tool("pg_restore"), "--list", f"--section={section}", str(path)])
    return {ln.split(";", 1)[0].strip() for ln in out.splitlines() if ln and not ln.startswith(";")}


def test_which_archives_let_the_data_be_read_beside_post_data(pg, crm_db, tmp_path: Path):
    from pgkeeper.pgrestore import overlap_data_items

    plain = _archive(pg, crm_db, tmp_path / "crm.dump")
    assert overlap_data_items(plain) == _section_ids(plain, "data") != set()
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:  # a refresh takes ACCESS EXCLUSIVE
        c.execute("CREATE MATERIALIZED VIEW company_names AS SELECT name FROM company")
    assert overlap_data_items(_archive(pg, crm_db, tmp_path / "matview.dump")) is None
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:  # statements that recurse to partitions
        c.execute("DROP MATERIALIZED VIEW company_names")
        c.execute("CREATE TABLE part (id int PRIMARY KEY) PARTITION BY RANGE (id)")
        c.execute("CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (100)")
    assert overlap_data_items(_archive(pg, crm_db, tmp_path / "partitioned.dump")) is None


def test_finished_items_are_found_however_the_processes_lines_interleave():
    """pg_restore -j writes "pg_restore:", " " and the message apart, from the leader and the
    workers at once: each line below was seen in -j2 runs of the CRM archive."""
    from pgkeeper.pgrestore import finished_item

    assert finished_item(b"pg_restore: finished item 3402 TABLE DATA deal\n") == "3402"
    assert finished_item(b"pg_restore:pg_restore: finished item 3229 CONSTRAINT company company_domain_key\n") == "3229"
    assert finished_item(b" finished item 3249 FK CONSTRAINT deal deal_contact_id_fkey\n") == "3249"
    assert finished_item(b"finished item 3420 SEQUENCE SET deal_id_seq\n") == "3420"
    assert finished_item(b"pg_restore: warning: finished item 7 TABLE DATA t\n") == "7"
    assert finished_item(b"pg_restore: launching item 3404 TABLE DATA activity\n") is None
    assert finished_item(b'pg_restore: processing data for table "public.finished item 5 x"\n') is None
    assert finished_item(b"pg_restore: finished main parallel loop\n") is None


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each start of the shadow's data read (the database it reads)."""
    from pgkeeper import content_check

    calls: list[str] = []
    start = content_check.DataReading.start

    def recording(self) -> None:  # noqa: ANN001
        calls.append(self._args[1])
        start(self)

    monkeypatch.setattr(content_check.DataReading, "start", recording)
    return calls


def test_the_data_read_beside_post_data_gives_back_the_same_database(pg, crm_db, env, repo, started):  # noqa: F811
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    copy = f"{crm_db}_overlap"
    try:
        m = backup()
        restore(m.backup_id, mode="new", target=copy)
        assert len(started) == 1 and started[0].startswith(f"{copy}_restoring_"), started  # read during pg_restore
        assert table_fingerprints(pg.conninfo(copy)) == table_fingerprints(pg.conninfo(crm_db))
    finally:
        drop_database(pg, copy)


def test_a_row_changed_after_the_data_section_is_still_caught(pg, crm_db, env, repo, monkeypatch):  # noqa: F811
    """The change is made when pg_restore reports its data section loaded, just before the read
    starts (post-data still running): the proof reads the shadow as it is, not the archive."""
    from pgkeeper import content_check
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    start = content_check.DataReading.start

    def change_then_start(self) -> None:  # noqa: ANN001
        with psycopg.connect(pg.conninfo(self._args[1]), autocommit=True) as c:
            c.execute("UPDATE company SET name = name || 'x' WHERE id = (SELECT min(id) FROM company)")
        start(self)

    monkeypatch.setattr(content_check.DataReading, "start", change_then_start)
    copy = f"{crm_db}_overlap"
    try:
        m = backup()
        state = restore(m.backup_id, mode="new", target=copy, return_state=True)
        assert state.is_failed()
        with pytest.raises(Exception, match="data of company; Type: TABLE DATA; Schema: public: differs") as exc:
            state.result()
        assert f"database {copy} was not created" in str(exc.value)
        with psycopg.connect(pg.conninfo()) as c:
            assert not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (copy,)).fetchone()
        assert leftovers(pg, copy) == []
    finally:
        drop_database(pg, copy)


def test_a_stopped_read_leaves_no_pg_dump_on_the_database(pg, crm_db, conn):
    """After a failed restore the read is stopped before the shadow is dropped: its pg_dumps are
    killed and waited for, whether stopped before, during or after they started."""
    from pgkeeper.content_check import DataReading
    from tests.helpers import wait_for

    def ours() -> int:
        with psycopg.connect(pg.conninfo()) as c:
            return c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = "
                             "'pgkeeper'", (crm_db,)).fetchone()[0]

    for delay in (0.0, 0.05, 0.3):
        reading = DataReading(conn, crm_db, {"TimeZone": "UTC"})
        reading.start()
        time.sleep(delay)
        reading.stop()
        wait_for(lambda: ours() == 0, 30, "the stopped pg_dump's session to end")
    never = DataReading(conn, crm_db, {"TimeZone": "UTC"})
    never.stop()
    never.start()  # after stop(): nothing starts
    assert not never.started

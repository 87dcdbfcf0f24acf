"""pg_restore's sessions into a shadow get their bulk-load settings, and the durable point after
them is one synchronous commit."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.helpers import drop_database


def test_pgoptions_escapes_spaces_and_backslashes():
    from pgkeeper.load_session import pgoptions

    assert pgoptions({"synchronous_commit": "off", "search_path": "a b\\c"}) == \
        "-c synchronous_commit=off -c search_path=a\\ b\\\\c"


def test_the_settings_reach_pg_restores_sessions_and_the_durable_point_commits(pg, crm_db, conn, tmp_path: Path):
    from pgkeeper import pgtools
    from pgkeeper.load_session import LOAD_SETTINGS, make_durable
    from pgkeeper.pgrestore import pg_restore_into
    from pgkeeper.pgtools import ToolFailed

    archive = tmp_path / "crm.dump"
    pgtools.run([pgtools.tool("pg_dump"), "-w", "-Fc", "-f", str(archive)], env=conn.libpq_env(crm_db), timeout=300)
    target = "load_session_target"
    drop_database(pg, target)
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {target}")
    try:
        # A setting that makes pg_restore fail proves its sessions got the options.
        with pytest.raises(ToolFailed, match="read-only transaction"):
            pg_restore_into(conn, archive, target, jobs=2, options={"default_transaction_read_only": "on"})
        drop_database(pg, target)
        with psycopg.connect(pg.conninfo(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {target}")
        pg_restore_into(conn, archive, target, jobs=2, options=LOAD_SETTINGS)
        with psycopg.connect(pg.conninfo(target)) as c:
            before = c.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        make_durable(conn, target)
        with psycopg.connect(pg.conninfo(target)) as c:
            after = c.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
            assert c.execute("SELECT count(*) FROM company").fetchone()[0] > 0
        assert after > before + 1  # make_durable committed a transaction with an id of its own
    finally:
        drop_database(pg, target)

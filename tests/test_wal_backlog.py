"""PostgreSQL's own archiver working through a backlog with wal-push: every segment lands
intact, push-ahead is used, and no marker is left behind."""

from __future__ import annotations

import os
import threading
import time

import psycopg
from psycopg import sql

from pgkeeper.wal.ahead import MARKER_DIR
from pgkeeper.wal.spool import LocalWalStore
from pgkeeper.wal.testing import archiving_cluster
from tests.conftest import PASSWORD


def test_the_archiver_drains_a_backlog_through_push_ahead() -> None:
    with archiving_cluster(PASSWORD, archive_timeout="0") as arch, \
            psycopg.connect(arch.cluster.conninfo(), autocommit=True) as c:
        # Pause archiving (an empty archive_command) and let segments queue up.
        command = c.execute("SHOW archive_command").fetchone()[0]
        c.execute("ALTER SYSTEM SET archive_command = ''")
        c.execute("SELECT pg_reload_conf()")
        time.sleep(1)
        c.execute("CREATE TABLE t (n int, body text)")
        names = []
        for _ in range(8):
            c.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
            names.append(c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
        ready = c.execute("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'").fetchone()[0]
        assert ready >= len(names)

        spool = arch.repo_path / "wal"
        seen_markers: set[str] = set()
        done = threading.Event()

        def watch_markers() -> None:
            while not done.is_set():
                try:
                    seen_markers.update(os.listdir(spool / MARKER_DIR))
                except FileNotFoundError:
                    pass
                time.sleep(0.001)

        watcher = threading.Thread(target=watch_markers)
        watcher.start()
        try:
            c.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(command))
            c.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 120
            while True:
                last, failed = c.execute("SELECT last_archived_wal, failed_count FROM pg_stat_archiver").fetchone()
                if last and last >= names[-1]:
                    break
                assert time.monotonic() < deadline, f"archiver stuck at {last} (failed_count={failed})"
                time.sleep(0.05)
        finally:
            done.set()
            watcher.join()

        assert failed == 0
        assert set(names) & seen_markers, "no file was pushed ahead"
        assert [m for m in os.listdir(spool / MARKER_DIR) if not m.startswith(".")] == []
        store = LocalWalStore(spool)
        pg_wal = arch.cluster.datadir / "pg_wal"
        for name in names:
            [obj] = store.find(name)
            assert store.read(obj) == (pg_wal / name).read_bytes()

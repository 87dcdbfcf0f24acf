"""Replace mode's safety backup yields the CPU to the shadow restore (pgkeeper/yielding.py): its
pg_dump and the server backends it uses run at nice 19, read from /proc of the real processes,
while the restore's own work and every thread of the process keep their priority, and get it back
once the restore waits for the backup; the safety backup is still the proven, listed backup the swap waits for."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import psycopg
import pytest

from tests.helpers import drop_database, table_fingerprints, wait_for


@pytest.fixture
def env(pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in pg_env.items():
        monkeypatch.setenv(k, v)
    return pg_env


def nice_of(pid: int) -> int | None:
    """Field 19 of /proc/PID/stat (None once the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[16])


def children() -> dict[int, str]:
    """This process's children (of every thread): pid -> command line."""
    found: dict[int, str] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                pass
    return found


GATE = """
CREATE FUNCTION gate_open() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    -- A restore's COPY into this table waits here while the test's gate file exists.
    WHILE (pg_stat_file(%s, true)).size IS NOT NULL LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN true;
END $$;
CREATE TABLE gate (x int CHECK (gate_open()));
INSERT INTO gate VALUES (1);
"""


def test_the_safety_backup_yields_while_the_shadow_is_restored_and_no_longer_once_waited_for(pg, crm_db, env, repo):
    from pgkeeper.catalog import list_backups
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    # Two real gates, so that each state can be looked at while it lasts: the shadow restore's COPY
    # of `gate` waits while a file exists (a CHECK that polls it), and the safety backup's pg_dump
    # and counts wait on a lock the test holds on the target's `company`.
    gate_dir = Path(tempfile.mkdtemp(prefix="pgkeeper-gate-", dir="/tmp"))
    gate_dir.chmod(0o755)  # the server's OS user stats the file
    gate_file = gate_dir / "closed"
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute(GATE.replace("%s", "'" + str(gate_file) + "'"))
    at_backup = table_fingerprints(pg.conninfo(crm_db))
    backup()
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute("DELETE FROM activity WHERE id % 3 = 0")
    changed = table_fingerprints(pg.conninfo(crm_db))

    gate_file.touch()
    blocker = psycopg.connect(pg.conninfo(crm_db))
    blocker.execute("LOCK TABLE company IN ACCESS EXCLUSIVE MODE")
    seen: dict[str, set[int]] = {"pg_dump": set(), "shadow pg_restore": set()}
    outcome: dict[str, object] = {}
    watching = threading.Event()

    def run() -> None:
        try:
            outcome["report"] = restore("latest", confirmed=True)
            outcome["thread nice"] = os.getpriority(os.PRIO_PROCESS, 0)  # the flow's own thread
        except BaseException as exc:
            outcome["error"] = exc

    def watch() -> None:  # every child the restore starts, as it runs
        while not watching.is_set():
            for pid, cmd in children().items():
                nice = nice_of(pid)
                if nice is not None and "pg_dump" in cmd and "--snapshot=" in cmd:
                    seen["pg_dump"].add(nice)
                elif nice is not None and "pg_restore" in cmd and "--dbname=" in cmd:
                    seen["shadow pg_restore"].add(nice)
            watching.wait(0.01)

    def dump_and_restore(nice: int, shadow_running: bool):  # noqa: ANN202
        rows = admin.execute("SELECT pid, datname, wait_event_type FROM pg_stat_activity "
                             "WHERE datname LIKE %s", (crm_db + "%",)).fetchall()
        waiting = {pid: nice_of(pid) for pid, db, event in rows if db == crm_db and event == "Lock"}
        restoring = any(db.startswith(crm_db + "_restoring_") for _, db, _ in rows)
        # pg_dump's backend (LOCK TABLE) and the counts' backend (count(*)), both at `nice`.
        if len(waiting) == 2 and set(waiting.values()) == {nice} and restoring == shadow_running:
            return waiting
        return None

    restoring = threading.Thread(target=run)
    watcher = threading.Thread(target=watch)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        restoring.start()
        watcher.start()
        with psycopg.connect(pg.conninfo(), autocommit=True) as admin:
            # While the shadow is being restored, the safety backup yields: its server backends ...
            wait_for(lambda: dump_and_restore(19, shadow_running=True), 120,
                     "the safety backup's two server backends at nice 19 beside the shadow restore", interval=0.2)
            # ... and its pg_dump, while the shadow's pg_restore keeps the normal priority.
            wait_for(lambda: seen["shadow pg_restore"] and seen["pg_dump"], 60, "both children seen", interval=0.1)
            assert seen == {"pg_dump": {19}, "shadow pg_restore": {before}}
            # No thread of this process was lowered (the backup's Python shares the GIL with the
            # restore's threads: pgkeeper/yielding.py).
            assert {nice_of(int(t.name)) for t in Path("/proc/self/task").iterdir()} - {None} == {before}
            # The shadow is restored and proven; the restore now waits for the backup, which is
            # given its priority back (the tests run as root, who may raise it).
            gate_file.unlink()
            wait_for(lambda: dump_and_restore(before, shadow_running=False), 120,
                     "the safety backup's server backends back at the normal priority", interval=0.2)
            wait_for(lambda: before in seen["pg_dump"], 30, "pg_dump back at the normal priority", interval=0.1)
    finally:
        gate_file.unlink(missing_ok=True)
        blocker.rollback()
        blocker.close()
        restoring.join(300)
        watching.set()
        watcher.join()
        gate_dir.rmdir()
    try:
        assert "error" not in outcome, outcome.get("error")
        report = outcome["report"]
        assert outcome["thread nice"] == before == os.getpriority(os.PRIO_PROCESS, 0)
        # What the safety backup holds is the database it replaced, and it is listed as such.
        assert table_fingerprints(pg.conninfo(crm_db)) == at_backup
        [safety] = [m for m in list_backups(repo.local(), crm_db) if "pre-restore" in m.labels]
        assert safety.backup_id == report.safety_backup_id  # type: ignore[attr-defined]
        assert safety.tables == {t: n for t, (n, _) in changed.items()}
    finally:
        with psycopg.connect(pg.conninfo()) as c:
            names = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                             (crm_db + "_pre_restore_%",)).fetchall()]
        for name in names:
            drop_database(pg, name)

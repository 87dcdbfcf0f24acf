"""Replace mode's safety backup yields the CPU to the shadow restore (pgkeeper/yielding.py): its
pg_dump and the server backends it uses run at nice 19, read from /proc of the real processes,
while the restore's own work keeps its priority; the safety backup is still the proven, listed
backup the swap waits for."""

from __future__ import annotations

import os
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


def test_the_safety_backup_runs_at_the_lowest_priority_beside_the_restore(pg, crm_db, env, repo):
    from pgkeeper.catalog import list_backups
    from pgkeeper.flows.backup import backup
    from pgkeeper.flows.restore import restore

    at_backup = table_fingerprints(pg.conninfo(crm_db))
    backup()
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute("DELETE FROM activity WHERE id % 3 = 0")
    changed = table_fingerprints(pg.conninfo(crm_db))

    # The safety backup's pg_dump and its counts wait on this lock, so they can be looked at while
    # they live; the shadow restore, which never touches the target's tables, goes on meanwhile.
    blocker = psycopg.connect(pg.conninfo(crm_db))
    blocker.execute("LOCK TABLE company IN ACCESS EXCLUSIVE MODE")
    seen: dict[str, set[int]] = {"pg_dump": set(), "shadow pg_restore": set(), "backends": set()}
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
                if nice is None:
                    continue
                if "pg_dump" in cmd and "--snapshot=" in cmd:
                    seen["pg_dump"].add(nice)
                elif "pg_restore" in cmd and "--dbname=" in cmd:
                    seen["shadow pg_restore"].add(nice)
            watching.wait(0.01)

    restoring = threading.Thread(target=run)
    watcher = threading.Thread(target=watch)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        restoring.start()
        watcher.start()
        with psycopg.connect(pg.conninfo(), autocommit=True) as admin:
            def waiting_backends() -> dict[int, int | None] | None:
                rows = admin.execute("SELECT pid, application_name, wait_event_type, left(query, 60) "
                                     "FROM pg_stat_activity WHERE datname = %s", (crm_db,)).fetchall()
                pids = [r[0] for r in rows if r[2] == "Lock"]
                niced = {pid: nice_of(pid) for pid in pids}
                return niced if len(pids) == 2 and all(n == 19 for n in niced.values()) else None

            # pg_dump's backend (LOCK TABLE) and the counts' backend (count(*)), both lowered.
            backends = wait_for(waiting_backends, 120, "the safety backup's two server backends at nice 19",
                                interval=0.2)
            seen["backends"] = set(backends.values())
            # The shadow restore did not wait for the blocked backup: it ran, at the normal priority.
            wait_for(lambda: seen["shadow pg_restore"] and seen["pg_dump"], 120,
                     "the shadow's pg_restore and the safety pg_dump seen", interval=0.1)
    finally:
        blocker.rollback()
        blocker.close()
        restoring.join(300)
        watching.set()
        watcher.join()
    try:
        assert "error" not in outcome, outcome.get("error")
        report = outcome["report"]
        assert seen == {"pg_dump": {19}, "shadow pg_restore": {before}, "backends": {19}}
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

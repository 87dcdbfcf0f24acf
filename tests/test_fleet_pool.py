"""The fleet through a work pool on two "machines" (issue 16).

A real Prefect server on PostgreSQL and two workers, each on its own host made of a network
namespace (tests/fleet_world.py): a worker reaches the server and the databases only over the
private network. Six databases on two PostgreSQL servers (one name on both) are backed up
through the pool; a restore waits for approval and is approved through the API; a worker's
machine dies mid-backup and the fleet reports it, its slot comes free, and a rerun succeeds on
the surviving worker.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.fleet_world import PASSWORD, World, fleet_world, wait_for
from tests.netns import unavailable_reason

REASON = unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"cannot make network namespaces here: {REASON}"),
              pytest.mark.timeout(1800)]  # building the world alone takes minutes on a loaded 2-core box

HELD: dict[str, list[int]] = {}  # restore run id -> pids of the worker-side processes holding it while it waited


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # No verify run after each backup: nothing here asserts them (test_alerting_e2e proves that chain),
    # and each took a worker slot and ~5 CPU-s.
    with fleet_world(verify_after_backup=False) as w:
        yield w


def when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def block_of(world: World, database: str, host: str) -> str:
    server = f"{world.clusters[host].host}:{world.clusters[host].port}"
    return next(b for b, (db, srv) in world.fleet_blocks.items() if db == database and srv == server)


def backup_window(world: World, run_id: str) -> tuple[datetime, datetime]:
    """From the start of the run's preflight to the end of its manifest write: the span the
    database's backup slot covers."""
    tasks = world.call("POST", "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [run_id]}}})
    pre = [when(t["start_time"]) for t in tasks if t["name"].startswith("preflight") and t["start_time"]]
    man = [when(t["end_time"]) for t in tasks if t["name"].startswith("write-manifest") and t["end_time"]]
    assert pre and man, f"run {run_id} has no preflight/write-manifest task runs"
    return min(pre), max(man)


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def processes_of_run(world: World, run_id: str) -> list[int]:
    """Pids on the worker hosts whose environment names this flow run (the process worker hands
    each run PREFECT__FLOW_RUN_ID)."""
    found = []
    for name in ("w1", "w2"):
        for pid in world.hosts[name].pids():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.split(b"\0"):
                found.append(pid)
    return found


def test_fleet_backs_up_every_database_through_the_pool(world: World) -> None:
    shared_db1 = block_of(world, "shared", "db1")
    fleet = world.start_run("fleet/nightly", {"max_parallel": 4})
    # Two more backups of one fleet database started at the same time, as a user or another
    # deployment might: the database's slot must keep all three apart, whoever took them.
    extra = [world.start_run("backup/fleet-member", {"connection_block": shared_db1,
                                                     "repository_block": "pgkeeper-repo"}) for _ in range(2)]
    done = world.final(fleet["id"], timeout=600)
    assert done["state"]["type"] == "COMPLETED", done["state"]["message"]
    for run in extra:
        assert world.final(run["id"])["state"]["type"] == "COMPLETED"

    # The fleet table: each database once, with its server, all OK; no password anywhere.
    rows = world.latest_artifact("fleet-backups")
    assert sorted(r["connection block"] for r in rows) == sorted(world.fleet_blocks)
    for r in rows:
        assert (r["database"], r["server"]) == world.fleet_blocks[r["connection block"]]
        assert r["result"] == "OK" and r["backup id"].startswith("backup_"), r
    assert sorted(r["database"] for r in rows).count("shared") == 2
    assert PASSWORD not in json.dumps(rows)

    members = [world.run(r["flow run"]) for r in rows] + [world.run(r["id"]) for r in extra]
    # Both workers took runs: the work went to the pool, not to the worker holding the fleet.
    assert {m["labels"].get("prefect.worker.name") for m in members} == {"w1", "w2"}
    # The pool never ran more members at once than the fleet's max_parallel.
    assert most_at_once([(when(m["start_time"]), when(m["end_time"])) for m in members]) <= 4
    # No two backups of one database overlapped (their slot-held spans, from the API's task runs).
    by_database: dict[tuple[str, str], list[tuple[datetime, datetime]]] = {}
    for m in members:
        by_database.setdefault(world.fleet_blocks[m["parameters"]["connection_block"]], []).append(
            backup_window(world, m["id"]))
    assert len(by_database[world.fleet_blocks[shared_db1]]) == 3
    for spans in by_database.values():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), spans


def test_restore_approval_resumes_on_a_worker(world: World) -> None:
    alpha = block_of(world, "alpha", "db1")
    run = world.start_run("restore/on-demand", {"connection_block": alpha, "repository_block": "pgkeeper-repo",
                                                "backup": "latest", "safety_backup": False})
    paused = wait_for(lambda: (r := world.run(run["id"]))["state"]["type"] == "PAUSED" and r, 300,
                      "the restore to wait for approval", interval=1)
    assert paused["state"]["name"] in {"Paused", "Suspended"}
    # The suspended execution's process exits just after the run turns Paused: give it a moment.
    deadline = time.monotonic() + 60
    while (pids := processes_of_run(world, run["id"])) and time.monotonic() < deadline:
        time.sleep(1)
    HELD[run["id"]] = pids
    world.call("POST", f"/flow_runs/{run['id']}/resume", {"run_input": {"confirm": True, "database_name": "alpha"}})
    done = world.final(run["id"], timeout=300)
    assert done["state"]["type"] == "COMPLETED", done["state"]["message"]
    assert done["labels"].get("prefect.worker.name") in {"w1", "w2"}


# The restore waits for approval suspended (issue 16.4): no worker process holds it meanwhile.
def test_restore_waiting_for_approval_holds_no_worker(world: World) -> None:
    assert HELD, "test_restore_approval_resumes_on_a_worker did not get as far as the wait"
    assert all(pids == [] for pids in HELD.values()), HELD


def run_fleet_from_admin(world: World, blocks: list[str] | None, background: bool = False,
                         on_cue: bool = False):  # noqa: ANN201
    """The fleet flow started from the admin's machine (not on a worker), so that killing a worker
    host cannot take the fleet down with it. Prints its outcome as JSON. on_cue (in the background):
    the process imports, then waits for a line on its stdin before it starts the fleet, so that its
    seconds of imports can overlap a wait of the test."""
    lines = ["import json", "from pgkeeper.flows.fleet import fleet"]
    if on_cue:
        lines.append("import sys; sys.stdin.readline()")
    lines += [f"state = fleet(connection_blocks={blocks!r}, max_parallel=6, return_state=True)",
              'print(json.dumps({"type": state.type.value, "message": state.message}))']
    code = "\n".join(lines) + "\n"
    if background:
        import sys

        from tests.fleet_world import ROOT

        return subprocess.Popen([sys.executable, "-c", code], env=world.env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.PIPE if on_cue else None, text=True)
    result = world.python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def slot_holders(world: World, slot: str) -> int:
    """Active slots of the limit; 0 before any backup of that database created it (run alone,
    this test's backup may be the first)."""
    import httpx

    try:
        return world.call("GET", f"/v2/concurrency_limits/{slot}")["active_slots"]
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return 0
        raise


def test_a_worker_host_dying_mid_backup(world: World) -> None:
    import psycopg

    from pgkeeper.slots import database_limit_name
    from tests.helpers import user_tables

    beta = block_of(world, "beta", "db1")
    slot = database_limit_name("beta", f"{world.clusters['db1'].host}:{world.clusters['db1'].port}")
    db1 = world.clusters["db1"]
    schema, table = user_tables(db1.conninfo("beta"))[0]
    before = {r["id"] for r in world.runs("backup/fleet-member")}
    # Hold a lock the backup needs: it takes beta's slot and then waits, mid-backup, on a worker.
    locker = psycopg.connect(db1.conninfo("beta"))
    fleet = rerun = None
    try:
        locker.execute(f'LOCK TABLE "{schema}"."{table}" IN ACCESS EXCLUSIVE MODE')
        fleet = run_fleet_from_admin(world, None, background=True)

        def members() -> list[dict]:
            return [r for r in world.runs("backup/fleet-member") if r["id"] not in before]

        member = wait_for(lambda: next((r for r in members() if r["parameters"].get("connection_block") == beta
                                        and r["state"]["type"] == "RUNNING"), None), 300, "beta's backup to start")
        wait_for(lambda: slot_holders(world, slot) == 1, 120,
                 "beta's backup to hold its slot")
        victim = member["labels"]["prefect.worker.name"]
        survivor = ({"w1", "w2"} - {victim}).pop()

        def victim_runs_only_beta() -> bool:
            """Every other member is done, or taken by the survivor: the host that dies takes only
            beta's run with it. Not waiting for the survivor's runs too: the slot's lease runs out
            60 s after the last renewal (every 45 s), so each 45 s before the kill costs 45 s more."""
            others = [r for r in members() if r["id"] != member["id"]]
            return len(others) == len(world.fleet_blocks) - 1 and all(
                r["state"]["type"] == "COMPLETED" or r["labels"].get("prefect.worker.name") == survivor
                for r in others)

        wait_for(victim_runs_only_beta, 300, "the victim's other backups")
        # The machine dies: its worker and every run on it, at once; nobody is left to report.
        assert world.hosts[victim].kill_all()
        world.workers.pop(victim).wait(30)
        locker.close()
        # The rerun below, started now: its imports overlap the wait for the crash and the lease.
        rerun = run_fleet_from_admin(world, [beta], background=True, on_cue=True)

        crashed = world.final(member["id"], timeout=300)  # the heartbeat stops; the automation crashes it
        assert crashed["state"]["type"] == "CRASHED" and "heartbeat" in crashed["state"]["message"]
        # The slot comes free when its lease (60 s) runs out: nobody renews it any more.
        wait_for(lambda: slot_holders(world, slot) == 0, 180,
                 "beta's slot to be freed")
        out, err = fleet.communicate(timeout=600)
        outcome = json.loads(out.strip().splitlines()[-1])
        assert outcome["type"] == "FAILED" and "1 of 6 backups failed" in outcome["message"], err[-3000:]
        assert f"{beta}: Crashed" in outcome["message"]
        rows = {r["connection block"]: r for r in world.latest_artifact("fleet-backups")}
        assert rows[beta]["result"] == "FAILED" and rows[beta]["state"] == "Crashed"
        assert all(r["result"] == "OK" for b, r in rows.items() if b != beta)
        # Run the fleet again for that database: the surviving worker backs it up.
        out, err = rerun.communicate("go\n", timeout=600)
        assert rerun.returncode == 0, err[-3000:]
        again = json.loads(out.strip().splitlines()[-1])
    finally:
        locker.close()
        for proc in (fleet, rerun):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    assert again["type"] == "COMPLETED", again["message"]
    rows = world.latest_artifact("fleet-backups")
    assert [r["connection block"] for r in rows] == [beta] and rows[0]["result"] == "OK"
    assert world.run(rows[0]["flow run"])["labels"]["prefect.worker.name"] == survivor

"""The fleet through the pool: one worker against two, and Prefect's overhead per database run.

    .venv/bin/python benchmarks/fleet.py [--scale 1.0] [--limit 4] [--rounds 1]

Builds the multi-machine world of tests/fleet_world.py (network namespaces: a Prefect server on
PostgreSQL, two PostgreSQL servers with six databases, two worker hosts; needs root), then:
1. one worker (w1, `pgkeeper serve --limit N`): the fleet of six databases, started from the
   admin host with max_parallel 6;
2. two workers (w1 and w2, each --limit N): the same fleet again.
Fleet wall time is the fleet run's start to end on the server. Per member run (from the API):
  dispatch  created -> Running (worker poll, process start, flow import, block load),
  work      first task start -> last task end (what pgkeeper itself does),
  overhead  the run's creation to its end, minus work: Prefect's share of a database's run.
On a 2-core machine the second worker helps only while the first waits on I/O.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import textwrap
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def run_fleet(world) -> str:  # noqa: ANN001
    code = textwrap.dedent("""
        import json
        from pgkeeper.flows.fleet import fleet
        state = fleet(max_parallel=6, return_state=True)
        print(json.dumps({"type": state.type.value, "id": str(state.state_details.flow_run_id)}))
    """)
    result = world.python(code, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    if outcome["type"] != "COMPLETED":
        raise SystemExit(f"the fleet ended {outcome['type']}")
    return outcome["id"]


def measure(world, fleet_id: str) -> dict:  # noqa: ANN001
    fleet = world.run(fleet_id)
    members = world.call("POST", "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [fleet_id]}}})
    if not members:  # older servers: match the member runs by time
        rows = world.latest_artifact("fleet-backups")
        members = [world.run(r["flow run"]) for r in rows]
    per_run = []
    for m in members:
        tasks = world.call("POST", "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [m["id"]]}}})
        starts = [when(t["start_time"]) for t in tasks if t["start_time"]]
        ends = [when(t["end_time"]) for t in tasks if t["end_time"]]
        created, start, end = when(m["created"]), when(m["start_time"]), when(m["end_time"])
        work = (max(ends) - min(starts)).total_seconds()
        per_run.append({"dispatch": (start - created).total_seconds(), "work": work,
                        "overhead": (end - created).total_seconds() - work,
                        "worker": m["labels"].get("prefect.worker.name")})
    wall = (when(fleet["end_time"]) - when(fleet["start_time"])).total_seconds()
    return {"wall": wall, "runs": per_run}


def show(label: str, result: dict) -> None:
    runs = result["runs"]
    workers = sorted({str(r["worker"]) for r in runs})
    print(f"{label}: fleet wall {result['wall']:.1f} s for {len(runs)} databases (workers {', '.join(workers)}); "
          f"per database run: dispatch median {statistics.median(r['dispatch'] for r in runs):.1f} s, "
          f"work median {statistics.median(r['work'] for r in runs):.1f} s, "
          f"Prefect overhead median {statistics.median(r['overhead'] for r in runs):.1f} s "
          f"(min {min(r['overhead'] for r in runs):.1f}, max {max(r['overhead'] for r in runs):.1f})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="CRM sample scale of each database (1.0: ~10 MB)")
    parser.add_argument("--limit", type=int, default=4, help="flow runs each worker runs at once")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    from tests.fleet_world import fleet_world
    from tests.netns import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    print(f"building the world (scale {args.scale})...", flush=True)
    with fleet_world(scale=args.scale, start_workers=False) as world:
        world.start_worker("w1", limit=args.limit)
        run_fleet(world)  # warm-up: first imports, first backups, limits created
        for i in range(args.rounds):
            show(f"one worker, round {i + 1}", measure(world, run_fleet(world)))
        world.start_worker("w2", plain_prefect=True, limit=args.limit)
        for i in range(args.rounds):
            show(f"two workers, round {i + 1}", measure(world, run_fleet(world)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

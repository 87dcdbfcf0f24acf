"""A small multi-machine pgkeeper, on one box, for the fleet test and benchmark.

Hosts are network namespaces (tests/netns.py) on one private /24:
  server  the Prefect server (`pgkeeper server start --database-url postgresql://...`) and the
          PostgreSQL cluster that holds its state;
  db1,db2 two PostgreSQL servers with three databases each, one name ("shared") on both;
  w1,w2   the workers: w1 is `pgkeeper serve`, w2 a plain `prefect worker start`.
Each listens on its own address only; the test process has an address too (the admin's
machine) and sets everything up the ordinary way: `pgkeeper setup` with a fleet file.
The repository is a directory every host sees (as an NFS mount would be).
Everything started is stopped, and every namespace and veth removed, also on failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgkeeper.localcluster import LocalCluster, free_port, scratch_dir
from tests.helpers import api_request, stop, wait_for
from tests.netns import Host, Network

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "fleet-Pw-" + uuid.uuid4().hex[:8]
DATABASES = {"db1": ["alpha", "beta", "shared"], "db2": ["gamma", "delta", "shared"]}
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
# What the worker-death test waits for, checked every second rather than Prefect's 15 s and 5 s: the
# repossessor frees a slot whose 60 s lease ran out (it looks for expired leases every 15 s), and the
# heartbeat automation (a proactive trigger, evaluated every 5 s) crashes the dead host's run. The
# lease and the grace themselves are unchanged; only the lag after them is shorter.
FAST_SERVICES = {"PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
                 "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": "PT1S"}


@dataclass
class World:
    net: Network
    base: Path
    server: Host
    hosts: dict[str, Host]
    clusters: dict[str, LocalCluster]
    api: str = ""
    credential: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    fleet_blocks: dict[str, tuple[str, str]] = field(default_factory=dict)  # block -> (database, server)

    @property
    def repo_dir(self) -> Path:
        return self.base / "repo"

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        return api_request(self.api, method, path, body, self.credential)

    def start_run(self, deployment: str, parameters: dict | None = None) -> dict:
        dep = self.call("GET", f"/deployments/name/{deployment}")
        return self.call("POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters or {}})

    def run(self, run_id: str) -> dict:
        return self.call("GET", f"/flow_runs/{run_id}")

    def final(self, run_id: str, timeout: float = 300) -> dict:
        done = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
        return wait_for(lambda: (r := self.run(run_id))["state"]["type"] in done and r, timeout,
                        f"run {run_id} to finish", interval=1)

    def runs(self, deployment: str) -> list[dict]:
        dep = self.call("GET", f"/deployments/name/{deployment}")
        return self.call("POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}},
                                                       "limit": 200})

    def latest_artifact(self, key: str) -> list[dict]:
        import json

        found = self.call("POST", "/artifacts/latest/filter", {"artifacts": {"key": {"any_": [key]}}})
        data = found[0]["data"]
        return json.loads(data) if isinstance(data, str) else data

    def python(self, code: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run Python against the world's API from the test's own (admin) host."""
        return subprocess.run([sys.executable, "-c", code], env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)

    def start_worker(self, name: str, plain_prefect: bool = False, limit: int = 3, wait: bool = True,
                     ) -> subprocess.Popen:
        host = self.hosts[name]
        # One pgkeeper home for all workers, as a user copies ~/.pgkeeper to each machine: a backup
        # signed on one worker must verify on another (the repository's manifest key lives there).
        env = {**self.env, "PGKEEPER_WORKER_NAME": name, "PGKEEPER_HOME": str(self.base / "worker-home"),
               "PREFECT_HOME": str(self.base / f"{name}-prefect"), "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
        if plain_prefect:  # the ordinary Prefect way, as on a machine without pgkeeper's CLI habits
            cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "pgkeeper", "--type", "process",
                   "--name", name, "--limit", str(limit)]
        else:
            cmd = [sys.executable, "-m", "pgkeeper.cli.main", "serve", "--limit", str(limit)]
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen([*host.wrap(), *cmd], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.workers[name] = proc
        if wait:
            self.wait_online(name)
        return proc

    def wait_online(self, *names: str) -> None:
        wait_for(lambda: {w["name"] for w in self.call("POST", "/work_pools/pgkeeper/workers/filter", {})
                          if w["status"] == "ONLINE"} >= set(names), 120, f"workers {', '.join(names)} online",
                 interval=1)

    def stop_worker(self, name: str) -> None:
        proc = self.workers.pop(name, None)
        if proc is not None:
            stop(proc)

    def worker_log(self, name: str) -> str:
        path = self.base / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def switch_off_verify_after_backup(world: World) -> int:
    """Disable the automation that runs verify/daily on each completed backup (prefect.yaml's
    deployment trigger), as an admin would in the UI; how many were disabled. In the fleet test
    every completed member backup set off a verify run nobody asserted: ~5 CPU-s of engine start
    each on a worker, about fifteen per file, and each took a worker slot the members wanted.
    The chain backup -> verify is proven by test_alerting_e2e against its own server."""
    dep = world.call("GET", "/deployments/name/verify/daily")
    owned = [a for a in world.call("GET", f"/automations/related-to/prefect.deployment.{dep['id']}")
             if a.get("enabled")]
    for automation in owned:
        world.call("PATCH", f"/automations/{automation['id']}", {"enabled": False})
    return len(owned)


def pool_exists(world: World) -> bool:
    import httpx

    try:
        world.call("GET", "/work_pools/pgkeeper")
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return False
        raise
    return True


def fleet_file_text(world: World) -> str:
    lines = ["# database host port user password-variable"]
    for host_name, databases in DATABASES.items():
        cluster = world.clusters[host_name]
        lines += [f"{db} {cluster.host} {cluster.port} postgres {host_name.upper()}_PGPASSWORD" for db in databases]
    return "\n".join(lines) + "\n"


def cluster_on(net: Network, host: Host, base: Path) -> LocalCluster:
    cluster = LocalCluster(base / host.name / "data", password=PASSWORD, listen=host.address,
                           client_network=net.cidr, wrapper=host.wrap(), port=free_port())
    (base / host.name).mkdir(mode=0o755)
    cluster.init().start()
    return cluster


@contextmanager
def fleet_world(workers: tuple[str, ...] = ("w1", "w2"), scale: float = 0.05, start_workers: bool = True,
                verify_after_backup: bool = True) -> Iterator[World]:
    """The whole world, built once; torn down in reverse whatever happens. verify_after_backup=False
    disables the verify run each completed backup sets off (see switch_off_verify_after_backup)."""
    from pgkeeper.sample_crm import create_crm
    from tests.helpers import create_database

    with ExitStack() as stack:
        base = scratch_dir("pgkeeper-fleet-world-")
        stack.callback(shutil.rmtree, base, True)
        net = Network()
        stack.callback(net.close)
        server = net.hub_host()
        hosts = {name: net.add_host(name) for name in ("db1", "db2", *workers)}
        net.join_root()
        clusters: dict[str, LocalCluster] = {}
        for name, host in [("server", server), ("db1", hosts["db1"]), ("db2", hosts["db2"])]:
            clusters[name] = cluster_on(net, host, base)
            stack.callback(clusters[name].destroy)
        world = World(net, base, server, hosts, clusters)
        for host_name, databases in DATABASES.items():
            for db in databases:
                create_database(clusters[host_name], db)
                create_crm(clusters[host_name].conninfo(db), scale=scale)
        create_database(clusters["server"], "prefect")

        # The Prefect server, on the server host, keeping its state in PostgreSQL.
        port = free_port()
        server_env = {**os.environ, **QUIET, "PGKEEPER_HOME": str(base / "server-home"),
                      "PREFECT_HOME": str(base / "server-prefect"), "PGKEEPER_SERVER_PORT": str(port),
                      "PREFECT_SERVER_DATABASE_PASSWORD": PASSWORD, "PGKEEPER_SERVER_START_TIMEOUT": "600",
                      **FAST_SERVICES}
        server_env.pop("PREFECT_API_URL", None)
        stack.callback(subprocess.run, [sys.executable, "-m", "pgkeeper.cli.main", "server", "stop"],
                       env=server_env, cwd=ROOT, capture_output=True, timeout=120)
        meta = clusters["server"]
        started = subprocess.run(
            [*server.wrap(), sys.executable, "-m", "pgkeeper.cli.main", "server", "start", "--host", server.address,
             "--database-url", f"postgresql://postgres@{meta.host}:{meta.port}/prefect"],
            env=server_env, cwd=ROOT, capture_output=True, text=True, timeout=700)
        assert started.returncode == 0, started.stdout + started.stderr
        world.api = f"http://{server.address}:{port}/api"
        world.credential = (base / "server-home" / "server-auth").read_text().strip()

        # Set up from the admin's machine, the ordinary way: `pgkeeper setup` with a fleet file.
        (base / "fleet.txt").write_text(fleet_file_text(world))
        db1 = clusters["db1"]
        world.env = {**os.environ, **QUIET, "PREFECT_API_URL": world.api, "PREFECT_API_AUTH_STRING": world.credential,
                     "PGKEEPER_HOME": str(base / "admin-home"), "PREFECT_HOME": str(base / "admin-prefect"),
                     "POSTGRES_HOST": db1.host, "POSTGRES_PORT": str(db1.port), "POSTGRES_USER": "postgres",
                     "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "alpha", "BACKUP_DIR": str(world.repo_dir),
                     "PGKEEPER_FLEET_FILE": str(base / "fleet.txt"), "DB1_PGPASSWORD": PASSWORD,
                     "DB2_PGPASSWORD": PASSWORD, "PREFECT_LOGGING_LEVEL": "WARNING",
                     # A dead host's runs are crashed 50 s after their last beat (every 30 s, Prefect's
                     # minimum), not 90: the worker-death test waits for it. 20 s spare for a late beat.
                     "PGKEEPER_HEARTBEAT_GRACE_SECONDS": "50"}
        world.env.pop("PGKEEPER_WAL_RUNTIME_ROOT", None)
        stack.callback(lambda: [world.stop_worker(name) for name in list(world.workers)])
        started = workers if start_workers else ()
        # The workers start as soon as setup has made their pool, while it goes on with variables,
        # deployments and automations: their seconds of imports use the core that setup's one
        # request at a time leaves idle. They find the deployments' runs once there are any.
        out, err = (open(base / f"setup.{name}", "w+") for name in ("out", "err"))  # noqa: SIM115
        stack.callback(out.close)
        stack.callback(err.close)
        setup = subprocess.Popen([sys.executable, "-m", "pgkeeper.cli.main", "setup"], env=world.env, cwd=ROOT,
                                 stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True)
        stack.callback(stop, setup)
        if started:
            wait_for(lambda: setup.poll() is not None or pool_exists(world), 600, "setup to create the work pool")
            if setup.poll() is None:
                for i, name in enumerate(started):  # side by side: each start-up is seconds of imports
                    world.start_worker(name, plain_prefect=i % 2 == 1, wait=False)
        setup.wait(timeout=600)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(setup.args, setup.returncode, out.read(), err.read())
        assert result.returncode == 0, result.stdout + result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        if not verify_after_backup:
            assert switch_off_verify_after_backup(world) >= 1, "no verify/daily trigger to switch off"
        for host_name, databases in DATABASES.items():
            c = clusters[host_name]
            for db in databases:
                block = f"pgkeeper-fleet-{db}-{c.host.replace('.', '-')}-{c.port}"
                world.fleet_blocks[block] = (db, f"{c.host}:{c.port}")
        world.wait_online(*started)
        yield world

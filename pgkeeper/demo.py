"""`pgkeeper demo`: a throwaway PostgreSQL with a sample CRM, backed up, verified and listed."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import sys
import time
from pathlib import Path

# One directory per user (two people on one machine must not share a cluster); under /var/tmp
# because the server's OS user (postgres, when we run as root) must reach the data directory.
DEMO_DIR = Path(os.environ.get("PGKEEPER_DEMO_DIR") or f"/var/tmp/pgkeeper-demo-{getpass.getuser()}")
DEMO_PASSWORD = "demo-only-password"
DEMO_DB = "crm"
STEPS = 5


class Steps:
    """`[n/5] what` lines, each with the time since the demo started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, n: int, text: str) -> None:
        print(f"[{n}/{STEPS} {time.monotonic() - self.started:5.1f} s] {text}", flush=True)


def use_demo_server(create: bool = True) -> None:
    """The demo's own Prefect server: its home under DEMO_DIR and a free port, kept for the next run.

    Unless told otherwise: a configured PREFECT_API_URL (or profile) or PGKEEPER_SERVER_PORT wins.
    """
    from pgkeeper.local_server import configured_api_url
    from pgkeeper.localcluster import free_port

    if configured_api_url() or os.environ.get("PGKEEPER_SERVER_PORT"):
        return
    state = DEMO_DIR / "server.json"
    if not create and not state.exists():
        return
    port = json.loads(state.read_text())["port"] if state.exists() else free_port()
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"port": port}))
    os.environ["PGKEEPER_SERVER_PORT"] = str(port)
    os.environ.setdefault("PGKEEPER_HOME", str(DEMO_DIR / "home"))


def _cluster():  # -> LocalCluster
    from pgkeeper.localcluster import LocalCluster, free_port

    state = DEMO_DIR / "cluster.json"
    port = json.loads(state.read_text())["port"] if state.exists() else free_port()
    return LocalCluster(DEMO_DIR / "pgdata", port=port, password=DEMO_PASSWORD)


def start_demo_cluster(scale: float, step: Steps) -> object:
    import psycopg

    from pgkeeper.localcluster import LocalCluster
    from pgkeeper.sample_crm import create_crm

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    DEMO_DIR.chmod(0o755)
    cluster: LocalCluster = _cluster()
    if not cluster.initialized:
        step(1, f"creating a throwaway PostgreSQL cluster in {cluster.datadir} (port {cluster.port})")
        cluster.init()
        (DEMO_DIR / "cluster.json").write_text(json.dumps({"port": cluster.port}))
    else:
        step(1, f"reusing the demo PostgreSQL cluster in {cluster.datadir} (port {cluster.port})")
    if not cluster.is_running():
        cluster.start()
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DB,)).fetchone():
            c.execute(f"CREATE DATABASE {DEMO_DB}")
    with psycopg.connect(cluster.conninfo(DEMO_DB), autocommit=True) as c:
        filled = c.execute("SELECT to_regclass('public.activity') IS NOT NULL").fetchone()[0] and \
            c.execute("SELECT EXISTS (SELECT 1 FROM activity)").fetchone()[0]
    if not filled:
        counts = create_crm(cluster.conninfo(DEMO_DB), scale=scale)
        step(2, f"sample CRM database '{DEMO_DB}' created: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    else:
        step(2, f"sample CRM database '{DEMO_DB}' already there")
    return cluster


def run_demo(scale: float = 2.0) -> int:
    from pgkeeper.local_server import ensure_api

    step = Steps()
    cluster = start_demo_cluster(scale, step)
    use_demo_server()
    api = ensure_api()
    step(3, f"Prefect API: {api}")
    # Importing Prefect's blocks takes 5-25 s on a small machine: say what is happening first.
    step(4, "saving the blocks 'demo-crm' and 'demo-repository', then running the backup flow")

    from pydantic import SecretStr

    from pgkeeper.blocks import BackupRepository, PostgresConnection
    from pgkeeper.catalog import list_backups
    from pgkeeper.flows.backup import backup

    PostgresConnection(host=cluster.host, port=cluster.port, user="postgres",
                       password=SecretStr(DEMO_PASSWORD), database=DEMO_DB).save("demo-crm", overwrite=True)
    BackupRepository(path=str(DEMO_DIR / "repository")).save("demo-repository", overwrite=True)
    state = backup(connection_block="demo-crm", repository_block="demo-repository", return_state=True)
    run_id = state.state_details.flow_run_id
    manifest = state.result()
    step(5, f"verifying {manifest.backup_id} with a restore drill (the verify flow):")
    from pgkeeper.flows.verify import verify

    report = verify(backup=manifest.backup_id, connection_block="demo-crm", repository_block="demo-repository")
    print("\n".join("      " + line for line in report.lines()))
    print("Repository listing:")
    from pgkeeper.cli.common import print_table
    from pgkeeper.fmt import human_bytes, human_seconds

    repo = BackupRepository(path=str(DEMO_DIR / "repository"))
    print_table(["ID", "DATABASE", "SIZE", "RATIO", "TABLES", "ROWS", "STATUS", "RTO"], [
        [m.backup_id, m.database, human_bytes(m.size), f"{m.ratio:.1f}x" if m.ratio else "-",
         str(len(m.tables)), str(sum(m.tables.values())), m.status, human_seconds(m.last_restore_seconds)]
        for m in list_backups(repo.storage())])
    ui = api[:-4] if api.endswith("/api") else api
    print()
    print(f"See the backup run in the Prefect UI: {ui}/runs/flow-run/{run_id}")
    where = cluster.conninfo(DEMO_DB).rsplit(" password=", 1)[0]
    print(f"Repository: {DEMO_DIR / 'repository'}   Demo database: {where}")
    print(f"Stop the demo (database and Prefect server) with: make stop   "
          f"(demo done in {time.monotonic() - step.started:.0f} s)")
    return 0


def stop_demo(remove: bool | None = False) -> None:
    """Stop the demo's cluster and Prefect server; remove DEMO_DIR when `remove`, or ask when None."""
    from pgkeeper.local_server import stop_local_server

    cluster = _cluster()
    if cluster.initialized:
        cluster.stop()
        print(f"demo PostgreSQL stopped ({cluster.datadir})")
    use_demo_server(create=False)
    if os.environ.get("PGKEEPER_HOME") == str(DEMO_DIR / "home") and stop_local_server():
        print("demo Prefect server stopped")
    if not DEMO_DIR.exists():
        return
    if remove is None:
        remove = ask(f"Remove {DEMO_DIR} (the demo cluster, its backups and the Prefect server's data)? [y/N] ")
    if remove:
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
        print(f"removed {DEMO_DIR}")
    else:
        print(f"kept {DEMO_DIR}; remove it with: make stop REMOVE=1")


def ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False

"""`pgkeeper demo`: a throwaway PostgreSQL with a sample CRM, backed up, verified and listed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

DEMO_DIR = Path(os.environ.get("PGKEEPER_DEMO_DIR", "/var/tmp/pgkeeper-demo"))
DEMO_PASSWORD = "demo-only-password"
DEMO_DB = "crm"


def _cluster():  # -> LocalCluster
    from pgkeeper.localcluster import LocalCluster, free_port

    state = DEMO_DIR / "cluster.json"
    port = json.loads(state.read_text())["port"] if state.exists() else free_port()
    return LocalCluster(DEMO_DIR / "pgdata", port=port, password=DEMO_PASSWORD)


def start_demo_cluster(scale: float) -> object:
    import psycopg

    from pgkeeper.localcluster import LocalCluster
    from pgkeeper.sample_crm import create_crm

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    DEMO_DIR.chmod(0o755)
    cluster: LocalCluster = _cluster()
    if not cluster.initialized:
        print(f"[1/5] creating a throwaway PostgreSQL cluster in {cluster.datadir} (port {cluster.port})")
        cluster.init()
        (DEMO_DIR / "cluster.json").write_text(json.dumps({"port": cluster.port}))
    else:
        print(f"[1/5] reusing the demo PostgreSQL cluster in {cluster.datadir} (port {cluster.port})")
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
        print(f"[2/5] sample CRM database '{DEMO_DB}' created: "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
    else:
        print(f"[2/5] sample CRM database '{DEMO_DB}' already there")
    return cluster


def run_demo(scale: float = 2.0) -> int:
    from pgkeeper.local_server import ensure_api

    cluster = start_demo_cluster(scale)
    api = ensure_api()
    print(f"[3/5] Prefect API: {api}")

    from pydantic import SecretStr

    from pgkeeper.blocks import BackupRepository, PostgresConnection
    from pgkeeper.catalog import list_backups
    from pgkeeper.flows.backup import backup

    PostgresConnection(host=cluster.host, port=cluster.port, user="postgres",
                       password=SecretStr(DEMO_PASSWORD), database=DEMO_DB).save("demo-crm", overwrite=True)
    BackupRepository(path=str(DEMO_DIR / "repository")).save("demo-repository", overwrite=True)
    print("[4/5] running the backup flow (blocks 'demo-crm' and 'demo-repository')")
    state = backup(connection_block="demo-crm", repository_block="demo-repository", return_state=True)
    run_id = state.state_details.flow_run_id
    manifest = state.result()
    print(f"[5/5] verifying {manifest.backup_id} with a restore drill (the verify flow):")
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
        for m in list_backups(repo.local())])
    ui = api[:-4] if api.endswith("/api") else api
    print()
    print(f"See the backup run in the Prefect UI: {ui}/runs/flow-run/{run_id}")
    where = cluster.conninfo(DEMO_DB).rsplit(" password=", 1)[0]
    print(f"Repository: {DEMO_DIR / 'repository'}   Demo database: {where}")
    print("Stop the demo database and the local Prefect server with: make stop")
    return 0


def stop_demo(remove: bool = False) -> None:
    cluster = _cluster()
    if cluster.initialized:
        cluster.stop()
        print(f"demo PostgreSQL stopped ({cluster.datadir})")
    if remove:
        shutil.rmtree(DEMO_DIR, ignore_errors=True)

"""`pgkeeper backup`'s early start (pgkeeper/early.py): the slot, the preflight, the backup id and
the dump are begun before Prefect is imported, and the run adopts them; whenever the run could
choose otherwise, today's path runs.

Each command runs in a fresh process (only there is Prefect not imported yet); a small probe
around pgkeeper's own functions reports what the early start did. Never a time."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql
from pydantic import SecretStr

from tests.early_probe import probe_script, run_probe
from tests.helpers import alive, wait_for

# What the early start did (tests/early_probe.py), and whether the slot was held when the stream
# was forked.
PROBE = probe_script("pgkeeper.early", "EarlyBackup", """\
    from pgkeeper.early_api import Api
    name = early.database_limit_name(self.conn.database, f"{self.conn.host}:{self.conn.port}")
    _, limit = Api(os.environ["PREFECT_API_URL"]).call("GET", f"/v2/concurrency_limits/{name}")
    seen["slot_held"] = limit["active_slots"]""")


def probe(tmp_path: Path, env: dict[str, str], *args: str, background: bool = False):  # noqa: ANN201
    return run_probe(PROBE, tmp_path, ["backup", *args], env, background)


def manifests(repo_dir: str) -> list:  # -> list[Manifest]
    from pgkeeper.catalog import list_backups
    from pgkeeper.storage.local import LocalStorage

    return list_backups(LocalStorage(Path(repo_dir)))


def listed(repo_dir: str) -> list[str]:
    return [m.backup_id for m in manifests(repo_dir)]


def folders(repo_dir: str) -> list[str]:
    backups = Path(repo_dir) / "backups"
    return sorted(p.name for p in backups.iterdir()) if backups.exists() else []


def test_the_run_adopts_the_stream_started_under_the_slot(pg, pg_env, tmp_path):
    seen, out = probe(tmp_path, pg_env)
    assert seen["code"] == 0 and seen["forked"], seen
    assert seen["slot_held"] == 1  # the database's backup slot was taken before the stream started
    assert seen["adopted"] == seen["backup_id"]
    assert listed(pg_env["BACKUP_DIR"]) == [seen["backup_id"]] == folders(pg_env["BACKUP_DIR"])
    assert seen["backup_id"] in out.stdout
    manifest = manifests(pg_env["BACKUP_DIR"])[0]
    assert manifest.tables and manifest.verifications[0].ok and len(manifest.files) == 2
    assert not alive(seen["child"])  # the child was reaped by the run

    # What the early stream wrote restores to the same database: pg_dump of both is identical.
    from tests.app_schema import dump_data, dump_schema
    from tests.helpers import run_cli_here

    conninfo, source, copy = pg.conninfo(), pg_env["POSTGRES_DB"], pg_env["POSTGRES_DB"] + "_early"
    restored = run_cli_here("restore", seen["backup_id"], "--into", copy, "--yes", env=pg_env)
    try:
        assert restored.returncode == 0, restored.stderr[-3000:]
        assert dump_schema(conninfo, copy) == dump_schema(conninfo, source)
        assert dump_data(conninfo, copy) == dump_data(conninfo, source)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))


def test_a_held_slot_leaves_the_early_start_aside_and_the_run_waits(pg_env, tmp_path):
    from prefect.concurrency.sync import concurrency

    from pgkeeper.slots import database_limit_name, ensure_limit

    name = database_limit_name(pg_env["POSTGRES_DB"], f"{pg_env['POSTGRES_HOST']}:{pg_env['POSTGRES_PORT']}")
    ensure_limit(name, 1)
    with concurrency(name, strict=True):  # another backup of this database is "running"
        proc, report = probe(tmp_path, pg_env, background=True)
        try:
            # The command gets as far as its run, which waits in the slot: nothing claimed meanwhile.
            wait_for(lambda: proc.poll() is None and not report.exists() and _run_waits(name), 180,
                     "the backup run waiting for the slot")
            assert folders(pg_env["BACKUP_DIR"]) == []
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    seen = json.loads(report.read_text())
    assert not seen["forked"] and seen["adopted"] is None
    assert seen["aside"] == "the database's backup slot is held"
    assert len(listed(pg_env["BACKUP_DIR"])) == 1


def _run_waits(name: str) -> bool:
    """A backup run of this process tree exists and is Running (it waits in backup_slot)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
    return any(r.name.startswith("backup ") for r in runs)


def test_a_saved_default_block_keeps_today_s_path(pg, pg_env, tmp_path):
    """The run would take its connection from `pgkeeper-db`: no early start, in-process check."""
    from prefect.settings import PREFECT_API_URL

    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.early import start_backup
    from pgkeeper.names import DEFAULT_CONNECTION_BLOCK

    args = argparse.Namespace(connection_block=None, repository_block=None, backup_dir=pg_env["BACKUP_DIR"],
                              database=pg_env["POSTGRES_DB"], host=None, port=None, user=None)
    env = {k: v for k, v in pg_env.items() if k != "BACKUP_DIR"}
    PostgresConnection(host=pg.host, port=pg.port, password=SecretStr(pg.password),
                       database=pg_env["POSTGRES_DB"]).save(DEFAULT_CONNECTION_BLOCK, overwrite=True)
    try:
        with _environ(env):
            assert start_backup(args, str(PREFECT_API_URL.value())) is None
    finally:
        PostgresConnection.delete(DEFAULT_CONNECTION_BLOCK)
    assert folders(pg_env["BACKUP_DIR"]) == []


class _environ:  # noqa: N801
    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.saved = env, {}

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_killed_early_start_leaves_nothing_listed(pg_env, tmp_path):
    proc, report = probe(tmp_path, {**pg_env, "PROBE_DIE_AFTER_FORK": "1"}, background=True)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    seen = json.loads(report.read_text())
    assert seen["forked"]
    wait_for(lambda: not alive(seen["child"]), 60, "the early child to die with its parent")
    assert listed(pg_env["BACKUP_DIR"]) == []  # its claimed folder has no manifest: garbage, not a backup


def test_a_run_adopts_only_what_it_would_have_chosen(tmp_path):
    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.connection import PlainConnection
    from pgkeeper.early import EarlyBackup, same_choice
    from pgkeeper.repository import PlainRepository

    plain = PlainConnection(host="db", port=5433, password="pw", database="shop")
    early = EarlyBackup(None, plain, PlainRepository(path=str(tmp_path)), {}, None, [], "b")  # type: ignore[arg-type]
    block = PostgresConnection(host="db", port=5433, password=SecretStr("pw"), database="shop")
    repo = BackupRepository(path=str(tmp_path))
    assert same_choice(early, block, repo)
    assert not same_choice(early, block.model_copy(update={"password": SecretStr("other")}), repo)
    assert not same_choice(early, block.model_copy(update={"database": "other"}), repo)
    assert not same_choice(early, block, BackupRepository(path=str(tmp_path), compression="gzip"))
    assert "pw" not in repr(plain)



def test_a_failed_early_stream_fails_the_run_and_leaves_nothing(pg, pg_env, crm_db, tmp_path):
    """pg_dump killed while the command may still be importing Prefect: the run's dump step
    reports it (one line, the command fails), and the claimed folder is removed."""
    from tests.test_backup_faults import TableLock, pg_dump_pids

    lock = TableLock(pg.conninfo(crm_db))  # pg_dump waits on it, where it can be hit
    proc, report = probe(tmp_path, {**pg_env, "PGKEEPER_TASK_RETRIES": "0"}, background=True)
    try:
        for pid in wait_for(lambda: pg_dump_pids(crm_db), 120, "the early pg_dump"):
            os.kill(pid, signal.SIGKILL)
    finally:
        lock.release()
        if proc.poll() is None and not report.exists():
            try:
                proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
    _, err = proc.communicate()
    seen = json.loads(report.read_text())
    assert seen["forked"] and seen["adopted"] == seen["backup_id"], seen  # "aside": why it did not start
    assert seen["code"] != 0
    errors = [ln for ln in err.splitlines() if ln.startswith("pgkeeper: error:")]
    assert len(errors) == 1 and "pg_dump was killed by signal 9" in errors[0], err[-3000:]
    assert listed(pg_env["BACKUP_DIR"]) == [] and folders(pg_env["BACKUP_DIR"]) == []

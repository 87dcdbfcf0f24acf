"""The fleet flow: many databases at once through a work pool, failures kept apart, one backup
per database at a time; a fleet defined as data.

A real process worker (a subprocess against the session's API) runs the member deployment
`backup/fleet-member`; the multi-machine version is tests/test_fleet_pool.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from pgkeeper.localcluster import free_port
from tests.helpers import ROOT, create_database, drop_database


@pytest.fixture(scope="module")
def pool_worker(prefect_api: str, tmp_path_factory) -> Iterator[str]:
    """The member deployment on a process pool of its own, and a worker for it."""
    from prefect.flows import Flow

    from pgkeeper.deployments.server_objects import ensure_work_pool
    from pgkeeper.deployments.setup import engine_command

    pool = "fleet-test-" + uuid.uuid4().hex[:6]
    ensure_work_pool(pool)
    member = Flow.from_source(str(ROOT), "pgkeeper/flows/backup.py:backup")
    # The runs' command as `pgkeeper setup` deploys it: the engine directly, no workspace supervisor.
    member.deploy(name="fleet-member", work_pool_name=pool, concurrency_limit=4, print_next_steps=False,
                  job_variables={"command": engine_command()})
    log = tmp_path_factory.mktemp("fleet-worker") / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", "--limit", "4"],
            env={**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"},
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield pool
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, 2)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
                worker.wait()


@pytest.fixture
def second_db(pg) -> Iterator[str]:
    from pgkeeper.sample_crm import create_crm

    name = "crm2_" + uuid.uuid4().hex[:8]
    create_database(pg, name)
    create_crm(pg.conninfo(name), scale=0.1)
    try:
        yield name
    finally:
        drop_database(pg, name)


def save(block, prefix: str) -> str:  # noqa: ANN001
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    block.save(name)
    return name


def fleet_table() -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    wanted = ArtifactFilter(key=ArtifactFilterKey(any_=["fleet-backups"]))
    with get_client(sync_client=True) as client:
        latest = client.read_latest_artifacts(artifact_filter=wanted)
    data = latest[0].data
    return json.loads(data) if isinstance(data, str) else data


def test_three_databases_one_unreachable(pool_worker, conn, second_db, repo) -> None:
    from pgkeeper.catalog import list_backups
    from pgkeeper.flows.fleet import fleet

    good1 = save(conn, "fleet-a")
    good2 = save(conn.for_database(second_db), "fleet-b")
    bad = save(conn.model_copy(update={"port": free_port(), "database": "nowhere"}), "fleet-bad")
    repo_block = save(repo, "fleet-repo")

    state = fleet(connection_blocks=[good1, good2, bad], repository_block=repo_block, return_state=True)
    assert state.is_failed()
    assert "1 of 3 backups failed" in state.message and "server unreachable" in state.message

    rows = {r["connection block"]: r for r in fleet_table()}
    assert set(rows) == {good1, good2, bad}
    assert rows[good1]["result"] == rows[good2]["result"] == "OK"
    assert rows[good1]["server"] == f"{conn.host}:{conn.port}" and rows[good2]["database"] == second_db
    assert rows[bad]["result"] == "FAILED" and "server unreachable" in rows[bad]["error"]
    assert conn.password.get_secret_value() not in str(rows) + state.message
    backed_up = {m.database for m in list_backups(repo.local())}
    assert backed_up == {conn.database, second_db}


def test_two_backups_of_one_database_never_overlap(pool_worker, conn, repo) -> None:
    from pgkeeper.catalog import list_backups
    from pgkeeper.flows.fleet import fleet

    # Two blocks, one database: the fleet starts both at once (two worker processes); the
    # database's slot serialises them.
    first, second = save(conn, "same-a"), save(conn, "same-b")
    results = fleet(connection_blocks=[first, second], repository_block=save(repo, "same-repo"), max_parallel=2)
    assert [r.ok for r in results] == [True, True]
    a, b = sorted(list_backups(repo.local()), key=lambda m: m.started_at)
    assert a.finished_at <= b.started_at


def test_backup_waits_while_the_database_slot_is_held(conn, repo) -> None:
    from prefect.concurrency.sync import concurrency

    from pgkeeper.catalog import list_backups
    from pgkeeper.flows.backup import backup
    from pgkeeper.slots import database_limit_name, ensure_limit

    db_block, repo_block = save(conn, "held"), save(repo, "held-repo")
    name = database_limit_name(conn.database, f"{conn.host}:{conn.port}")
    ensure_limit(name, 1)
    started = threading.Event()
    runner = threading.Thread(target=lambda: (started.set(), backup(connection_block=db_block,
                                                                    repository_block=repo_block)))
    with concurrency(name, strict=True):  # another backup of this database is "running"
        runner.start()
        started.wait()
        runner.join(timeout=8)
        assert runner.is_alive() and list_backups(repo.local()) == []
    runner.join(timeout=120)
    assert not runner.is_alive() and len(list_backups(repo.local())) == 1


def test_a_fleet_defined_as_data(pool_worker, conn, tmp_path) -> None:
    """The members come from the `pgkeeper_fleet` variable, else the pgkeeper-fleet-* blocks;
    a fleet file becomes connection blocks (passwords from the environment) and that variable."""
    from prefect.variables import Variable

    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.deployments.fleet_setup import apply_fleet_file
    from pgkeeper.errors import SetupError
    from pgkeeper.fleet_def import FLEET_VARIABLE, fleet_members, parse_fleet_file

    fleet_file = tmp_path / "fleet.txt"
    fleet_file.write_text(f"# database host port user password-variable\n"
                          f"{conn.database} {conn.host} {conn.port} postgres FLEET_TEST_PW\n"
                          f"other {conn.host} {conn.port} postgres FLEET_TEST_PW  # a comment\n")
    password = conn.password.get_secret_value()
    with pytest.raises(SetupError, match="FLEET_TEST_PW is not set"):
        apply_fleet_file(fleet_file, {}, lambda item, outcome: None)
    notes: list[tuple[str, str]] = []
    try:
        names = apply_fleet_file(fleet_file, {"FLEET_TEST_PW": password}, lambda i, o: notes.append((i, o)))
        assert [o for _, o in notes] == ["created", "created", "created"]
        assert password not in str(notes)
        assert names[0] == f"pgkeeper-fleet-{conn.database}-127-0-0-1-{conn.port}".replace("_", "-")
        loaded = PostgresConnection.load(names[0])
        assert (loaded.database, loaded.password.get_secret_value()) == (conn.database, password)
        assert fleet_members() == names == Variable.get(FLEET_VARIABLE)
        assert fleet_members(["x", "y", "x"]) == ["x", "y"]  # given explicitly: those, each once
        Variable.unset(FLEET_VARIABLE)
        assert fleet_members() == sorted(names)  # no list: every block with the fleet prefix
    finally:
        Variable.unset(FLEET_VARIABLE)

    with pytest.raises(SetupError, match="line 2: expected 5 fields"):
        parse_fleet_file("a h 5432 u PW\nb h 5432 u\n")
    with pytest.raises(SetupError, match="not an environment variable name"):
        parse_fleet_file("a h 5432 u s3cr3t!\n")
    with pytest.raises(SetupError, match="listed twice"):
        parse_fleet_file("a h 5432 u PW\na h 5432 u PW2\n")


def test_server_database_url_keeps_the_password_off_the_command_line() -> None:
    """`pgkeeper serve/server start --database-url`: Prefect's async URL, the password from
    Prefect's own setting (a placeholder Prefect fills), never from argv."""
    from pgkeeper.errors import BadName
    from pgkeeper.local_server import prefect_database_url

    env = {"PREFECT_SERVER_DATABASE_PASSWORD": "pw"}
    assert prefect_database_url("postgresql://prefect@db:5432/prefect", env) == \
        "postgresql+asyncpg://prefect:${PREFECT_SERVER_DATABASE_PASSWORD}@db:5432/prefect"
    assert prefect_database_url("postgres://prefect@db/prefect", {}) == "postgresql+asyncpg://prefect@db/prefect"
    with pytest.raises(BadName, match="holds a password"):
        prefect_database_url("postgresql://prefect:secret@db/prefect", env)
    with pytest.raises(BadName, match="not PostgreSQL"):
        prefect_database_url("mysql://prefect@db/prefect", env)

"""The fleet flow: many databases at once, failures kept apart, one backup per database at a time."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import pytest

from pgkeeper.localcluster import free_port
from tests.helpers import create_database, drop_database


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


def test_three_databases_one_unreachable(conn, second_db, repo) -> None:
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
    assert rows[bad]["result"] == "FAILED" and "server unreachable" in rows[bad]["error"]
    assert conn.password.get_secret_value() not in str(rows) + state.message
    backed_up = {m.database for m in list_backups(repo.local())}
    assert backed_up == {conn.database, second_db}


def test_two_backups_of_one_database_never_overlap(conn, repo) -> None:
    from pgkeeper.catalog import list_backups
    from pgkeeper.flows.fleet import fleet

    # Two blocks, one database: the fleet starts both at once; the database's slot serialises them.
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
    name = database_limit_name(conn.database)
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

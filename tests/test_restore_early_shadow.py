"""`pgkeeper restore`'s early shadow (pgkeeper/early_shadow.py): the early start's child goes on from
the work file to create the shadow and pg_restore into it while the command imports Prefect, holding
the target's restore slot; the run adopts that restore only when its plan makes that very shadow.

Each command runs in a fresh process (only there is Prefect not imported yet), with the probe of
tests/early_probe.py around the early start. Never a time."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.early_probe import probe_script, run_probe
from tests.helpers import (
    alive,
    backed_up_copy,
    database_exists,
    drop_database,
    pids_with_arg,
    run_cli_here,
    shadows_of,
    wait_for,
    waited_safety_backup,
)
from tests.test_restore_kill import _free_slot

# What the early start did: its work directory and the shadow it restores into (None: fetch only).
# PROBE_UNNAMED: the command line's plan keeps its own shadow name, so the run's plan does not fit.
PROBE = probe_script("pgkeeper.early_restore", "EarlyFetch", """\
    seen["workdir"] = str(self.workdir)
    seen["shadow"] = self.shadow.shadow if self.shadow else None
    if os.environ.get("PROBE_UNNAMED"):
        early.name_shadow = lambda plan: plan""")
ADOPTED_RESTORE = "since before the run (pgkeeper restore's early start)"


@pytest.fixture(scope="module")
def source(pg, crm_template, tmp_path_factory) -> Iterator[dict[str, str]]:
    """A database with a table that takes pg_restore a moment, and a repository with one backup
    of it, for the whole file: the old scripts' variables pointing at them."""
    with backed_up_copy(pg, crm_template, tmp_path_factory.mktemp("shadow-repo"), "shadow_src_",
                        "CREATE TABLE bulk AS SELECT i, md5(i::text) AS t FROM generate_series(1, 300000) i",
                        "ALTER TABLE bulk ADD PRIMARY KEY (i)") as env:
        yield env


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def copy_name(pg) -> Iterator[str]:
    """A database name the test restores into; dropped afterwards with any shadow of it."""
    name = "shadow_copy_" + uuid.uuid4().hex[:8]
    yield name
    for db in [name, *shadows_of(pg, name)]:
        drop_database(pg, db)
    _free_slot(name)


def restoring_into(pg, target: str) -> bool:
    """A pg_restore into a shadow of `target` runs (/proc scanned only once a shadow exists)."""
    return bool(shadows_of(pg, target)) and bool(pids_with_arg(f"--dbname={target}_restoring_".encode()))


def slot_free(target: str) -> bool:
    """Whether a second restore of `target` gets its restore slot at this instant (the first
    request of restore_slot's, which then waits and refuses as before); a slot got is given back."""
    from pgkeeper.early_api import Api
    from pgkeeper.early_lease import give_back, retried
    from pgkeeper.slots import limit_name

    api = Api(os.environ["PREFECT_API_URL"])
    name = limit_name("restore", target)
    retried(lambda: api.ensure_limit(name))
    lease = retried(lambda: api.try_lease(name, 60))  # a busy API (503) asked again
    if lease is None:
        return False
    give_back(api, lease["lease_id"])
    return True


def same_as_source(pg, source: dict[str, str], name: str) -> bool:
    from tests.app_schema import dump_data, dump_schema

    conninfo = pg.conninfo()
    return (dump_schema(conninfo, name) == dump_schema(conninfo, source["POSTGRES_DB"])
            and dump_data(conninfo, name) == dump_data(conninfo, source["POSTGRES_DB"]))


def test_the_run_adopts_the_early_restore_which_holds_the_slot(pg, source, work, copy_name, tmp_path):
    proc, report = run_probe(PROBE, tmp_path, ["restore", "latest", "--into", copy_name],
                             {**source, "PGKEEPER_WORK_DIR": str(work)}, background=True)
    try:
        wait_for(lambda: restoring_into(pg, copy_name) or proc.poll() is not None, 120,
                 "the early pg_restore", interval=0.01)
        # While it restores, a second restore of the same target finds the slot taken, as today.
        assert proc.poll() is not None or not slot_free(copy_name)
    finally:
        out, err = proc.communicate(timeout=300)
    seen = json.loads(report.read_text())
    assert seen["code"] == 0 and seen["forked"], err[-3000:]
    assert seen["shadow"] and seen["shadow"].startswith(copy_name + "_restoring_")
    assert seen["adopted"] == seen["backup_id"] and ADOPTED_RESTORE in err
    assert not alive(seen["child"]) and list(work.iterdir()) == []
    assert shadows_of(pg, copy_name) == []  # the shadow became the target
    assert same_as_source(pg, source, copy_name)
    assert slot_free(copy_name)  # the run gave the slot back


def test_a_plan_that_does_not_fit_undoes_the_early_shadow(pg, source, work, copy_name, tmp_path):
    env = {**source, "PGKEEPER_WORK_DIR": str(work), "PROBE_UNNAMED": "1"}
    seen, out = run_probe(PROBE, tmp_path, ["restore", "latest", "--into", copy_name], env)
    assert seen["code"] == 0 and seen["forked"] and seen["shadow"], out.stderr[-3000:]
    assert seen["adopted"] is None  # the run's shadow is another: nothing of the early start taken
    assert ADOPTED_RESTORE not in out.stderr and "fetched before the run" not in out.stderr
    assert not alive(seen["child"]) and list(work.iterdir()) == []
    assert not database_exists(pg, seen["shadow"]) and shadows_of(pg, copy_name) == []
    assert same_as_source(pg, source, copy_name)
    assert slot_free(copy_name)


def test_a_command_killed_mid_restore_leaves_a_shadow_the_next_run_drops(pg, source, work, copy_name, tmp_path):
    from pgkeeper.shadowdb import SHADOW_MARK

    env = {**source, "PGKEEPER_WORK_DIR": str(work)}
    proc, _ = run_probe(PROBE, tmp_path, ["restore", "latest", "--into", copy_name], env, background=True)
    try:
        wait_for(lambda: restoring_into(pg, copy_name) or proc.poll() is not None, 120,
                 "the early pg_restore", interval=0.01)
        assert proc.poll() is None, "the restore ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    arg = f"--dbname={copy_name}_restoring_".encode()
    wait_for(lambda: not pids_with_arg(arg), 60, "pg_restore to die with the killed command")
    left = shadows_of(pg, copy_name)
    assert left and not database_exists(pg, copy_name)
    with psycopg.connect(pg.conninfo()) as c:
        comment = c.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                            (left[0],)).fetchone()[0]
    assert comment.startswith(SHADOW_MARK) and f" pid={proc.pid} " in comment  # the command's, not the child's
    # Its slot's lease is still held (the test API runs no lease service; a server's would end it
    # within a minute), and recorded in its work directory, which names the dead command.
    assert not slot_free(copy_name) and [p.name for p in work.iterdir()] != []

    again = run_cli_here("restore", "latest", "--into", copy_name, env=env)
    assert again.returncode == 0, again.stderr[-3000:]  # the lease given back, without waiting for it
    assert f"dropped shadow database of an interrupted restore {left[0]}" in again.stderr
    assert shadows_of(pg, copy_name) == [] and list(work.iterdir()) == []
    assert same_as_source(pg, source, copy_name)


def test_replace_restores_early_only_when_confirmed_on_the_command_line(pg, source, work, copy_name, tmp_path):
    """Replace mode: with --yes the early child restores the shadow and the safety backup of the
    replaced copy runs on after the command; without --yes the answer is typed first, so the early
    start only fetches."""
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(copy_name),
                                                                     sql.Identifier(source["POSTGRES_DB"])))
    with psycopg.connect(pg.conninfo(copy_name), autocommit=True) as c:
        c.execute("CREATE TABLE added_after_backup (x int)")
    env = {**source, "PGKEEPER_WORK_DIR": str(work)}
    kept: list[str] = []
    try:
        seen, out = run_probe(PROBE, tmp_path, ["restore", "latest", "--target", copy_name, "--yes"], env)
        assert seen["code"] == 0 and seen["shadow"] and ADOPTED_RESTORE in out.stderr, out.stderr[-3000:]
        assert same_as_source(pg, source, copy_name)
        # The command ended with the database in service; the safety backup of the replaced copy
        # runs on as a process of its own, and the copy is held until it is listed.
        copy = waited_safety_backup(out.stdout)
        with psycopg.connect(pg.conninfo()) as c:
            [mark] = c.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                               (copy,)).fetchone()
        assert "; safety backup backup_" in mark and '"safety": "backup_' in mark, mark

        with psycopg.connect(pg.conninfo(copy_name), autocommit=True) as c:
            c.execute("CREATE TABLE added_again (x int)")
        seen, out = run_probe(PROBE, tmp_path, ["restore", "latest", "--target", copy_name, "--no-safety-backup"],
                              env, stdin=copy_name + "\n")
        assert seen["code"] == 0 and seen["forked"] and seen["shadow"] is None, out.stderr[-3000:]
        assert seen["adopted"] == seen["backup_id"] and ADOPTED_RESTORE not in out.stderr
        assert same_as_source(pg, source, copy_name)
        assert not alive(seen["child"]) and list(work.iterdir()) == [] and shadows_of(pg, copy_name) == []
    finally:
        with psycopg.connect(pg.conninfo()) as c:
            kept = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                            (copy_name + "\\_pre\\_restore\\_%",)).fetchall()]
        for name in kept:
            drop_database(pg, name)
    assert len(kept) == 2

"""`pgkeeper restore`'s early start (pgkeeper/early_restore.py): the stored dump is fetched (sha256
proven, decompressed into a work file) before Prefect is imported, and the run's fetch-backup step
adopts the work file; whenever the run could choose otherwise, today's path runs.

Each command runs in a fresh process (only there is Prefect not imported yet); a small probe
around pgkeeper's own functions reports what the early start did. Never a time."""

from __future__ import annotations

import json
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from tests.early_probe import probe_script, run_probe
from tests.helpers import alive, backed_up_copy, database_exists, drop_database, run_cli_here, shadows_of, wait_for

# What the early start did (tests/early_probe.py), and its work directory. PROBE_MOVE_WORK_DIR:
# the run's work root differs from the early start's (it is changed right after the fork).
PROBE = probe_script("pgkeeper.early_restore", "EarlyFetch", """\
    seen["workdir"] = str(self.workdir)
    if os.environ.get("PROBE_MOVE_WORK_DIR"):
        os.environ["PGKEEPER_WORK_DIR"] = os.environ["PROBE_MOVE_WORK_DIR"]""")


@pytest.fixture(scope="module")
def source(pg, crm_template, tmp_path_factory) -> Iterator[dict[str, str]]:
    """A database and a repository with one backup of it, for the whole file: the old scripts'
    variables pointing at them."""
    with backed_up_copy(pg, crm_template, tmp_path_factory.mktemp("early-repo"), "early_src_") as env:
        yield env


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The restores' work root (PGKEEPER_WORK_DIR): empty again after each restore."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def copy_name(pg) -> Iterator[str]:
    """A database name the test restores into; dropped afterwards with any shadow of it."""
    name = "early_copy_" + uuid.uuid4().hex[:8]
    yield name
    for db in [name, *shadows_of(pg, name)]:
        drop_database(pg, db)


def probe(tmp_path: Path, env: dict[str, str], *args: str, background: bool = False,  # noqa: ANN201
          stdin: str | None = None):
    return run_probe(PROBE, tmp_path, ["restore", *args], env, background, stdin)


def backup_id(env: dict[str, str]) -> str:
    from pgkeeper.catalog import list_backups
    from pgkeeper.storage.local import LocalStorage

    return list_backups(LocalStorage(Path(env["BACKUP_DIR"])))[-1].backup_id


def test_the_run_adopts_the_early_fetch_and_restores_the_source(pg, source, work, copy_name, tmp_path):
    from tests.app_schema import dump_data, dump_schema

    seen, out = probe(tmp_path, {**source, "PGKEEPER_WORK_DIR": str(work)}, "latest", "--into", copy_name)
    assert seen["code"] == 0 and seen["forked"], out.stderr[-3000:]
    assert seen["backup_id"] == backup_id(source) == seen["adopted"]
    assert Path(seen["workdir"]).parent == work
    assert "fetched before the run" in out.stderr
    assert not alive(seen["child"])  # reaped by the run
    assert list(work.iterdir()) == []  # the work directory went with the run
    conninfo = pg.conninfo()
    assert dump_schema(conninfo, copy_name) == dump_schema(conninfo, source["POSTGRES_DB"])
    assert dump_data(conninfo, copy_name) == dump_data(conninfo, source["POSTGRES_DB"])


def test_replace_asks_at_the_terminal_while_the_dump_is_fetched(pg, source, work, copy_name, tmp_path):
    """Replace mode without --yes: the name is typed while the child fetches; the run adopts the
    work file, and the replaced database is kept under its old-copy name."""
    from tests.app_schema import dump_data

    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(copy_name),
                                                                     sql.Identifier(source["POSTGRES_DB"])))
    with psycopg.connect(pg.conninfo(copy_name), autocommit=True) as c:
        c.execute("CREATE TABLE added_after_backup (x int)")
    env = {**source, "PGKEEPER_WORK_DIR": str(work)}
    seen, out = probe(tmp_path, env, "latest", "--target", copy_name, "--no-safety-backup", stdin=copy_name + "\n")
    try:
        assert seen["code"] == 0 and seen["forked"], out.stderr[-3000:]
        assert f"Replace database {copy_name}" in out.stdout
        assert seen["adopted"] == seen["backup_id"] == backup_id(source)
        assert not alive(seen["child"]) and list(work.iterdir()) == []
        assert dump_data(pg.conninfo(), copy_name) == dump_data(pg.conninfo(), source["POSTGRES_DB"])
    finally:
        with psycopg.connect(pg.conninfo()) as c:
            kept = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                            (copy_name + "_pre_restore_%",)).fetchall()]
        for name in kept:
            drop_database(pg, name)
    assert len(kept) == 1


def test_early_start_off_takes_today_s_path(pg, source, work, copy_name, tmp_path):
    env = {**source, "PGKEEPER_WORK_DIR": str(work), "PGKEEPER_EARLY_START": "0"}
    seen, out = probe(tmp_path, env, "latest", "--into", copy_name)
    assert seen["code"] == 0, out.stderr[-3000:]
    assert not seen["forked"] and seen["adopted"] is None
    assert "fetched before the run" not in out.stderr
    assert database_exists(pg, copy_name) and list(work.iterdir()) == []


def test_a_killed_early_start_leaves_nothing_the_next_restore_keeps(pg, source, work, copy_name, tmp_path):
    proc, report = probe(tmp_path, {**source, "PGKEEPER_WORK_DIR": str(work), "PROBE_DIE_AFTER_FORK": "1"},
                         "latest", "--into", copy_name, background=True)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    seen = json.loads(report.read_text())
    assert seen["forked"]
    wait_for(lambda: not alive(seen["child"]), 60, "the early child to die with its parent")
    assert not database_exists(pg, copy_name) and shadows_of(pg, copy_name) == []  # nothing created
    # At most the dead command's work directory (it names the dead process): the next restore removes it.
    assert [p.name for p in work.iterdir()] in ([], [Path(seen["workdir"]).name])
    again = run_cli_here("restore", "latest", "--into", copy_name, env={**source, "PGKEEPER_WORK_DIR": str(work)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(work.iterdir()) == []


def test_a_flipped_byte_is_refused_in_one_line_and_nothing_is_created(pg, source, work, copy_name, tmp_path):
    repo = tmp_path / "damaged-repo"
    shutil.copytree(source["BACKUP_DIR"], repo)
    damaged = backup_id(source)
    from pgkeeper.catalog import resolve_backup
    from pgkeeper.storage.local import LocalStorage

    stored = repo / "backups" / damaged / resolve_backup(LocalStorage(repo), damaged).dump_file.name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    env = {**source, "BACKUP_DIR": str(repo), "PGKEEPER_WORK_DIR": str(work)}
    seen, out = probe(tmp_path, env, "latest", "--into", copy_name)
    assert seen["forked"] and seen["adopted"] == damaged  # the early child met it, and the run said so
    assert seen["code"] != 0
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("pgkeeper: error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert damaged in errors[0] and f"database {copy_name} was not created" in errors[0]
    assert "sha256 mismatch" in errors[0] or "corrupt" in errors[0].lower()
    assert not database_exists(pg, copy_name) and shadows_of(pg, copy_name) == []
    assert not alive(seen["child"]) and list(work.iterdir()) == []


def test_a_run_with_another_work_root_fetches_itself(pg, source, work, copy_name, tmp_path):
    """The work root changes between the early start and the run: the early fetch is undone (its
    directory removed) and the run fetches into its own root."""
    other = tmp_path / "other-work"
    other.mkdir()
    env = {**source, "PGKEEPER_WORK_DIR": str(work), "PROBE_MOVE_WORK_DIR": str(other)}
    seen, out = probe(tmp_path, env, "latest", "--into", copy_name)
    assert seen["code"] == 0 and seen["forked"], out.stderr[-3000:]
    assert seen["adopted"] is None and "fetched before the run" not in out.stderr
    assert not alive(seen["child"]) and list(work.iterdir()) == [] and list(other.iterdir()) == []
    assert database_exists(pg, copy_name)


def test_a_run_adopts_only_what_it_would_have_chosen(pg, source, work, tmp_path, monkeypatch):
    from pgkeeper import early_stream
    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.catalog import resolve_backup
    from pgkeeper.connection import PlainConnection
    from pgkeeper.early_restore import EarlyFetch, adopt, fits
    from pgkeeper.repository import PlainRepository
    from pgkeeper.tasks.restore_steps import plan_restore

    monkeypatch.setenv("PGKEEPER_WORK_DIR", str(work))
    repo_dir = source["BACKUP_DIR"]
    fields = {"host": pg.host, "port": pg.port, "database": source["POSTGRES_DB"]}
    conn = PostgresConnection(**fields, password=SecretStr(pg.password))
    repo = BackupRepository(path=repo_dir)
    plan = plan_restore(conn, repo, "latest", "local", "new", "early_never_made")
    workdir = work / "pgkeeper-restore-test"
    workdir.mkdir()
    early = EarlyFetch(PlainConnection(**fields, password=pg.password), PlainRepository(path=repo_dir),
                       resolve_backup(repo.storage(), plan.backup_id), work, workdir, [])
    assert fits(early, conn, repo, plan)
    other_file = plan.file.model_copy(update={"sha256": "0" * 64})
    assert not fits(early, conn, repo, plan.model_copy(update={"file": other_file}))
    assert not fits(early, conn, repo, plan.model_copy(update={"backup_id": plan.backup_id + "x"}))
    assert not fits(early, conn, repo, plan.model_copy(update={"source": "s3"}))
    assert not fits(early, conn, BackupRepository(path=str(tmp_path / "elsewhere")), plan)
    assert not fits(early, conn.model_copy(update={"password": SecretStr("other")}), repo, plan)
    monkeypatch.setenv("PGKEEPER_WORK_DIR", str(tmp_path))
    assert not fits(early, conn, repo, plan)

    # One that does not fit is undone (its directory removed); a pending one of another kind is
    # left for its own run.
    monkeypatch.setattr(early_stream, "_pending", early)
    assert adopt(conn, repo, plan) is None and not workdir.exists()
    assert early_stream._pending is None
    from pgkeeper.early import EarlyBackup

    monkeypatch.setattr(early_stream, "_pending", early)
    assert early_stream.take_pending(EarlyBackup) is None and early_stream._pending is early

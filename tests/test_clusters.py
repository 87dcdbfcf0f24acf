"""Two real servers, the same database name on both, one local repository and one bucket.

Every backup names its server (host, port, system identifier) in its id and manifest: `list`
shows which server each came from, `latest` is per server and database, a name that is
ambiguous across servers is refused in one line, retention keeps N per server and database, and
a restore gives back that server's own data.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from pgkeeper import pgtools
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.catalog import list_backups, resolve_backup
from pgkeeper.errors import BadName
from pgkeeper.localcluster import LocalCluster, throwaway_cluster
from pgkeeper.manifest import Manifest
from pgkeeper.names import backup_id_server, backup_id_stamp, backup_id_time, server_key
from pgkeeper.sample_crm import create_crm
from tests.conftest import PASSWORD
from tests.helpers import create_database, drop_database, run_cli
from tests.test_s3_offsite import s3_repo

LEGACY_ID = "backup_20200101_000000"  # the id form of backups made before ids named their server


def sysid(cluster: LocalCluster) -> str:
    with psycopg.connect(cluster.conninfo()) as c:
        return str(c.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def dump_text(cluster: LocalCluster, db: str) -> str:
    """pg_dump's plain output, without the random \\restrict key lines."""
    out = subprocess.run([pgtools.tool("pg_dump"), "--no-owner", "--no-privileges", "-d", db],
                         env=cluster.libpq_env(db), check=True, capture_output=True, text=True).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


def legacy_backup(storage, db: str) -> None:  # noqa: ANN001
    """A complete backup as pgkeeper wrote them before ids named their server (signed, manifest last)."""
    storage.begin_backup(LEGACY_ID)
    with storage.write_file(LEGACY_ID, f"{db}.dump") as f:
        f.write(b"made by an older pgkeeper")
    at = backup_id_time(LEGACY_ID)
    m = Manifest(backup_id=LEGACY_ID, database=db, server_version="15", tool_version="test", started_at=at,
                 finished_at=at + timedelta(seconds=5), compression="none", size=f.size,
                 files=[storage.stored_file(f"{db}.dump", f)])
    storage.finish_backup(LEGACY_ID, m.to_bytes())


@pytest.fixture(scope="module")
def pg2() -> LocalCluster:
    """A second throwaway cluster: another server, another system identifier."""
    with throwaway_cluster("pgkeeper-pg2-", PASSWORD) as (cluster, _base):
        yield cluster


@pytest.fixture(scope="module")
def shared(pg: LocalCluster, pg2: LocalCluster, s3_endpoint: str, tmp_path_factory):
    """The same database name on both servers with different rows; backups A1, B1, A2 into one
    repository with an offsite bucket; a backup from before ids named their server."""
    import boto3

    db = "crm_" + uuid.uuid4().hex[:8]
    bucket = "pgkeeper-clusters-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    repo = s3_repo(tmp_path_factory.mktemp("clusters"), s3_endpoint, bucket, prefix="fleet")
    suffix = uuid.uuid4().hex[:8]
    repo.save(f"repo-{suffix}", overwrite=True)
    blocks = {}
    for name, cluster in (("a", pg), ("b", pg2)):
        create_database(cluster, db)
        create_crm(cluster.conninfo(db), scale=0.1)
        with psycopg.connect(cluster.conninfo(db), autocommit=True) as c:
            c.execute("CREATE TABLE whoami (server text)")
            c.execute("INSERT INTO whoami VALUES (%s)", (name,))
        PostgresConnection(host=cluster.host, port=cluster.port, user="postgres", password=SecretStr(PASSWORD),
                           database=db).save(f"db-{name}-{suffix}", overwrite=True)
        blocks[name] = f"db-{name}-{suffix}"
    from pgkeeper.flows.backup import backup

    try:
        made = {}
        for step in ("a1", "b1", "a2"):
            made[step] = backup(connection_block=blocks[step[0]], repository_block=f"repo-{suffix}")
        for source in ("local", "s3"):
            legacy_backup(repo.storage(source), db)
        yield {"db": db, "repo": repo, "repo_block": f"repo-{suffix}", "blocks": blocks, "made": made,
               "keys": {"a": server_key(pg.host, pg.port, sysid(pg)), "b": server_key(pg2.host, pg2.port, sysid(pg2))}}
    finally:
        for cluster in (pg, pg2):
            drop_database(cluster, db)


def test_each_backup_names_its_server_in_its_place_and_manifest(shared, pg, pg2):
    made, keys = shared["made"], shared["keys"]
    assert keys["a"] != keys["b"]
    for step, m in made.items():
        assert backup_id_server(m.backup_id) == keys[step[0]] == m.server
        assert (Path(shared["repo"].path) / "backups" / m.backup_id / "manifest.json").is_file()
    assert (made["a1"].host, made["a1"].port) == (pg.host, pg.port)
    assert (made["b1"].host, made["b1"].port) == (pg2.host, pg2.port)
    for source in ("local", "s3"):
        listed = list_backups(shared["repo"].storage(source), shared["db"])
        assert [m.server for m in listed] == [None, keys["a"], keys["b"], keys["a"]]
        assert [m.backup_id for m in listed][1:] == [made[s].backup_id for s in ("a1", "b1", "a2")]


def test_list_shows_the_server_of_each_backup_and_filters_by_server(shared, pg, pg2):
    repo_dir = shared["repo"].path
    out = run_cli("list", "--backup-dir", repo_dir, "--database", shared["db"])
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert "SERVER" in header.split()
    lines = {m.backup_id: next(r for r in rows if r.startswith(m.backup_id)) for m in shared["made"].values()}
    assert f"{pg.host}:{pg.port} ({sysid(pg)})" in lines[shared["made"]["a1"].backup_id]
    assert f"{pg2.host}:{pg2.port} ({sysid(pg2)})" in lines[shared["made"]["b1"].backup_id]
    assert any(r.startswith(LEGACY_ID) and " unknown " in r for r in rows)

    only_b = run_cli("list", "--backup-dir", repo_dir, "--server", f"{pg2.host}:{pg2.port}")
    assert only_b.returncode == 0, only_b.stderr
    ids = [ln.split()[0] for ln in only_b.stdout.splitlines() if ln.startswith("backup_")]
    assert ids == [shared["made"]["b1"].backup_id]


def test_latest_is_per_server_and_an_ambiguous_name_is_one_line(shared, pg, pg2):
    made, db = shared["made"], shared["db"]
    for source in ("local", "s3"):
        storage = shared["repo"].storage(source)
        assert resolve_backup(storage, "latest", db, server=f"{pg.host}:{pg.port}").backup_id == made["a2"].backup_id
        assert resolve_backup(storage, "latest", db, server=sysid(pg2)).backup_id == made["b1"].backup_id
        assert resolve_backup(storage, "latest", db, server=shared["keys"]["b"]).backup_id == made["b1"].backup_id
        assert resolve_backup(storage, "latest", db, server="unknown").backup_id == LEGACY_ID
        # The connection's own server breaks the tie when no server was named.
        assert resolve_backup(storage, "latest", db, prefer=(f"{pg2.host}:{pg2.port}",)).backup_id \
            == made["b1"].backup_id
        # The id as people type it, without its server, still names its backup.
        assert resolve_backup(storage, backup_id_stamp(made["b1"].backup_id)).backup_id == made["b1"].backup_id
        with pytest.raises(BadName) as exc:
            resolve_backup(storage, "latest", db)
        message = str(exc.value)
        assert "\n" not in message and "2 servers" in message and "--server" in message
        assert shared["keys"]["a"] in message and shared["keys"]["b"] in message


def test_retention_keeps_n_per_server_and_database(shared):
    from pgkeeper.tasks.retention import retain

    made = shared["made"]
    strict = shared["repo"].model_copy(update={"retention_days": 0, "retention_weeks": 0, "retention_months": 0,
                                               "retention_min_count": 1})
    for source in ("local", "s3"):
        report, _decisions, _manifests = retain(strict, strict.storage(source), source, True, [], datetime.now(UTC))
        # One per server and database: A's older backup goes; B's, older than A's newest, stays;
        # the backup that names no server is a group of its own.
        assert report.removed == [made["a1"].backup_id]
        assert set(report.kept) == {made["a2"].backup_id, made["b1"].backup_id, LEGACY_ID}


def test_a_restore_from_each_server_gives_back_that_servers_data(shared, pg, pg2):
    from pgkeeper.flows.restore import restore

    db = shared["db"]
    for name, cluster, source in (("a", pg, "local"), ("b", pg2, "s3")):
        into = f"back_{name}_" + uuid.uuid4().hex[:6]
        try:
            report = restore(backup="latest", mode="new", target=into, source=source,
                             connection_block=shared["blocks"][name], repository_block=shared["repo_block"])
            assert report.backup_id == shared["made"]["a2" if name == "a" else "b1"].backup_id
            assert dump_text(cluster, into) == dump_text(cluster, db)
            with psycopg.connect(cluster.conninfo(into)) as c:
                assert c.execute("SELECT server FROM whoami").fetchone()[0] == name
        finally:
            drop_database(cluster, into)

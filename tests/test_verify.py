"""The verify flow against a real PostgreSQL, a real repository and the Prefect test API."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from pgkeeper.manifest import Manifest
from tests.helpers import database_exists

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def env(pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Flows read the connection from the old scripts' variables (no blocks saved)."""
    for k, v in pg_env.items():
        monkeypatch.setenv(k, v)
    return pg_env


def take_backup(env: dict[str, str]) -> Manifest:
    from pgkeeper.flows.backup import backup

    return backup(connection_block=None, repository_block=None, backup_dir=env["BACKUP_DIR"])


def run_verify(env: dict[str, str], **kw):
    from pgkeeper.flows.verify import verify

    return verify(connection_block=None, repository_block=None, backup_dir=env["BACKUP_DIR"], **kw)


def read_manifest(env: dict[str, str], backup_id: str) -> Manifest:
    return Manifest.from_bytes((Path(env["BACKUP_DIR"]) / "backups" / backup_id / "manifest.json").read_bytes())


def write_manifest(env: dict[str, str], m: Manifest) -> None:
    """An insider's change (it holds the manifest key, so the manifest is signed again)."""
    from pgkeeper.config import repository_from_env

    repository_from_env(env).storage().write_manifest(m.backup_id, m.to_bytes())


def scratch_databases(pg) -> list[str]:
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgkeeper_verify_%'")]


def test_good_backup_passes_all_five_and_records_rto(env, pg):
    m = take_backup(env)
    report = run_verify(env)

    assert [c.status for c in report.checks] == ["PASS"] * 5
    assert report.checks[1].title == f"dump format: {len(m.tables)} tables, " + report.checks[1].title.split(", ")[1]
    assert f"data: {len(m.tables)}/{len(m.tables)} tables, schema, grants, data and properties equal" \
        in report.lines()[3]
    assert report.lines()[-1].startswith("Backup is valid and restorable. RTO measured:")
    recorded = read_manifest(env, m.backup_id)
    assert recorded.status == "verified"
    last = recorded.verifications[-1]
    assert last.method == "restore" and last.ok and last.restore_seconds and last.restore_seconds > 0
    assert set(last.checks) == {"integrity", "format", "restore", "data", "freshness"}
    assert scratch_databases(pg) == []

    checks_table, history_table = latest_artifacts(f"verify-{m.database.replace('_', '-')}",
                                                   f"backup-history-{m.database.replace('_', '-')}")
    assert [row["result"] for row in checks_table] == ["PASS"] * 5
    assert history_table[0]["backup"] == m.backup_id and history_table[0]["status"] == "verified"
    assert history_table[0]["rto"] != "-" and history_table[0]["rows"] == str(sum(m.tables.values()))


def latest_artifacts(*keys: str) -> list[list[dict]]:
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))))
    by_key = {a.key: a.data for a in found}
    return [json.loads(by_key[k]) if isinstance(by_key[k], str) else by_key[k] for k in keys]


def dump_path(env: dict[str, str], m: Manifest) -> Path:
    return Path(env["BACKUP_DIR"]) / "backups" / m.backup_id / m.files[0].name


def failed_report(env: dict[str, str], **kw):
    from pgkeeper.tasks.verify_checks import VerificationFailed

    with pytest.raises(VerificationFailed) as caught:
        run_verify(env, **kw)
    assert caught.value.report is not None
    return caught.value.report


def test_flipped_byte_fails_test_1_naming_the_file(env, pg):
    m = take_backup(env)
    path = dump_path(env, m)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    report = failed_report(env)
    first = report.checks[0]
    assert first.status == "FAIL" and f"{m.backup_id}/{m.files[0].name}" in first.title
    assert [c.status for c in report.checks[1:4]] == ["SKIP"] * 3
    assert report.checks[4].status == "PASS"  # freshness does not depend on the file
    recorded = read_manifest(env, m.backup_id)
    assert recorded.status == "failed" and not recorded.verifications[-1].ok
    assert scratch_databases(pg) == []


def test_truncated_file_fails_test_1(env, pg):
    m = take_backup(env)
    path = dump_path(env, m)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)

    report = failed_report(env)
    assert report.checks[0].status == "FAIL" and m.files[0].name in report.checks[0].title
    assert read_manifest(env, m.backup_id).status == "failed"
    assert scratch_databases(pg) == []


def test_tampered_row_count_fails_test_4_naming_the_table_and_drops_scratch(env, pg):
    m = take_backup(env)
    table = sorted(m.tables)[0]
    m.tables[table] += 7
    write_manifest(env, m)

    report = failed_report(env)
    assert [c.status for c in report.checks[:3]] == ["PASS"] * 3
    data = report.checks[3]
    assert data.status == "FAIL" and table in data.title
    assert f"expected {m.tables[table]}, found {m.tables[table] - 7}" in data.title
    assert [t for t in m.tables if t in data.title] == [table]
    assert scratch_databases(pg) == []


def test_stale_backup_fails_freshness(env, pg):
    from datetime import timedelta

    m = take_backup(env)
    m.started_at -= timedelta(hours=30)
    m.finished_at -= timedelta(hours=30)
    write_manifest(env, m)

    report = failed_report(env, restore=False)
    assert report.checks[4].status == "FAIL" and "limit 26 h" in report.checks[4].title
    assert [c.status for c in report.checks[:2]] == ["PASS", "PASS"]
    # The backup itself is sound: only the repository is stale.
    assert read_manifest(env, m.backup_id).verifications[-1].ok


def test_no_restore_checks_integrity_and_format_only(env, pg):
    m = take_backup(env)
    report = run_verify(env, restore=False, backup=m.backup_id + ".sql.gz")

    assert [c.status for c in report.checks] == ["PASS", "PASS", "SKIP", "SKIP", "PASS"]
    assert report.restore_seconds is None
    recorded = read_manifest(env, m.backup_id)
    assert recorded.verifications[-1].method == "quick" and recorded.status == "checked"


def test_cli_verify_prints_one_line_per_test(env, pg):
    from tests.helpers import run_cli, run_cli_here

    m = take_backup(env)
    ok = run_cli_here("verify", env=env)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[:5]] == [f"Test {n}" for n in range(1, 6)]
    assert all(ln.endswith(" PASS") for ln in lines[:5])
    assert lines[0].startswith("Test 1: file integrity (sha256, decompression) ...")
    assert f"{len(m.tables)} tables" in lines[1] and f"{len(m.tables)}/{len(m.tables)} tables" in lines[3]
    assert lines[5].startswith("Backup is valid and restorable. RTO measured: ")

    listed = run_cli("list", env=env)
    row = next(ln for ln in listed.stdout.splitlines() if ln.startswith(m.backup_id))
    assert " verified " in row and " s " in row  # status and RTO (e.g. "0.3 s")

    path = dump_path(env, m)
    with open(path, "r+b") as f:
        f.truncate(100)
    bad = run_cli("verify", m.backup_id + ".sql.gz", "--no-restore", env=env)
    assert bad.returncode == 5  # integrity
    assert bad.stdout.splitlines()[0].endswith(" FAIL") and m.files[0].name in bad.stdout.splitlines()[0]
    assert bad.stderr.strip().splitlines()[-1].startswith(f"pgkeeper: error: backup {m.backup_id} failed")
    assert env["POSTGRES_PASSWORD"] not in bad.stdout + bad.stderr

    unknown = run_cli("verify", "backup_20000101_000000", env=env)
    assert unknown.returncode == 3  # not found
    assert "Traceback" not in unknown.stderr + unknown.stdout
    assert unknown.stderr.strip().splitlines()[-1] == (
        f"pgkeeper: error: backup backup_20000101_000000 not found in {env['BACKUP_DIR']}")


def warning_events(database: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(
            event=EventNameFilter(name=["pgkeeper.warning"]),
            resource=EventResourceFilter(id=[f"pgkeeper.database.{database}"])), limit=50)
    return list(page.events)


def test_emptied_table_triggers_anomaly_warning(env, pg, crm_db):
    import time

    first = take_backup(env)
    run_verify(env)
    table = max(first.tables, key=lambda t: first.tables[t])
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute(f"TRUNCATE {table} CASCADE")
    second = take_backup(env)
    assert second.backup_id > first.backup_id

    report = run_verify(env)  # completes: the backup is sound, only suspicious
    assert report.backup_id == second.backup_id and report.ok
    assert any(table in a and "fell 100%" in a for a in report.anomalies)
    deadline = time.monotonic() + 30
    while not (events := [e for e in warning_events(crm_db) if e.payload["kind"] == "anomaly"]) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert events, "no pgkeeper.warning event reached the API"
    payload = events[0].payload
    assert payload["kind"] == "anomaly" and payload["backup_id"] == second.backup_id
    assert payload["previous_backup_id"] == first.backup_id and table in payload["message"]


SLOW_INDEX = """
CREATE FUNCTION public.drill_slow(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
  -- Slow only while a verify drill rebuilds the index: the source stays fast.
  IF current_database() LIKE 'pgkeeper_verify_%' THEN PERFORM pg_sleep(30); END IF;
  RETURN i;
END $$;
CREATE TABLE public.drill_slow_t (i int);
INSERT INTO public.drill_slow_t VALUES (1), (2), (3);
CREATE INDEX drill_slow_idx ON public.drill_slow_t (public.drill_slow(i));
"""


def restoring_sessions(pg) -> list[str]:
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        return [r[0] for r in c.execute(
            "SELECT datname FROM pg_stat_activity WHERE datname LIKE 'pgkeeper_verify_%' "
            "AND query LIKE 'CREATE INDEX drill_slow_idx%'")]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_sigterm_mid_restore_leaves_no_scratch_database(env, pg, crm_db):
    import os
    import signal
    import subprocess
    import sys
    import time

    from prefect.client.orchestration import get_client

    from tests.helpers import ROOT

    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute(SLOW_INDEX)
    take_backup(env)
    proc = subprocess.Popen([sys.executable, "-m", "pgkeeper.cli.main", "verify"], env={**os.environ, **env},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (busy := restoring_sessions(pg)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert busy, "the drill never reached the slow index"
        scratch = busy[0]
        assert processes_mentioning(f"--dbname={scratch}"), "pg_restore should be running"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert not database_exists(pg, scratch), err[-2000:]
    assert scratch_databases(pg) == []
    assert processes_mentioning(f"--dbname={scratch}") == []
    # The drill's own cleanup dropped it; the on_crashed hook found nothing left to do.
    assert f"scratch database {scratch} was already gone" in err
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(limit=200) if r.id.hex.startswith(scratch.rsplit("_", 1)[1])]
    assert len(runs) == 1 and runs[0].state is not None
    assert runs[0].state.is_crashed() or runs[0].state.is_cancelled()


FAILING_CHECK = """
CREATE FUNCTION public.drill_check(i int) RETURNS bool IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
  -- Passes in the source; refuses every row inside a verify drill's scratch database.
  IF current_database() LIKE 'pgkeeper_verify_%' THEN RAISE EXCEPTION 'drill_check refuses row %', i; END IF;
  RETURN true;
END $$;
CREATE TABLE public.drill_checked (i int CHECK (public.drill_check(i)));
INSERT INTO public.drill_checked VALUES (1);
"""


def test_restore_that_fails_midway_fails_test_3_and_drops_scratch(env, pg, crm_db):
    with psycopg.connect(pg.conninfo(crm_db), autocommit=True) as c:
        c.execute(FAILING_CHECK)
    m = take_backup(env)

    report = failed_report(env)
    assert [c.status for c in report.checks] == ["PASS", "PASS", "FAIL", "SKIP", "PASS"]
    assert "pg_restore failed" in report.checks[2].title and "drill_check refuses row" in report.checks[2].title
    assert scratch_databases(pg) == []
    assert read_manifest(env, m.backup_id).status == "failed"


def test_verifications_finishing_together_are_all_recorded(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.tasks.verify_checks import CheckResult, VerifyReport
    from pgkeeper.tasks.verify_record import record_verification
    from tests.test_retention_flow import make_backup

    repo = BackupRepository(path=str(tmp_path / "repo"))
    backup_id = "backup_20261125_010000"
    before = len(make_backup(repo, backup_id, {"crm.dump": b"x" * 100}).verifications)
    reports = [VerifyReport(backup_id=backup_id, database="crm", source="local", method="quick",
                            checks=[CheckResult(number=1, status="PASS", title=f"run {i}")]) for i in range(6)]
    with ThreadPoolExecutor(len(reports)) as pool:
        list(pool.map(lambda r: record_verification(repo, "local", r), reports))
    recorded = Manifest.from_bytes(repo.local().read_manifest(backup_id)).verifications
    assert len(recorded) == before + len(reports)
    assert sorted(v.checks["integrity"] for v in recorded[before:]) == sorted(f"PASS run {i}" for i in range(6))

"""`pgkeeper restore` from a terminal, in a fresh process as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT, drop_database, run_cli, run_cli_here, table_fingerprints
from tests.test_restore import change_data, old_copies


def cli_with_input(*args: str, env: dict[str, str], answer: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgkeeper.cli.main", *args], env={**os.environ, **env},
                          input=answer, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_restore_asks_for_the_name_then_replaces(pg, crm_db, pg_env):
    assert run_cli_here("backup", env=pg_env).returncode == 0  # set-up: the subject is the restore
    at_backup = table_fingerprints(pg.conninfo(crm_db))
    change_data(pg, crm_db)
    changed = table_fingerprints(pg.conninfo(crm_db))
    try:
        refused = cli_with_input("restore", "latest", env=pg_env, answer="not-it\n")
        assert refused.returncode == 6  # not confirmed
        assert "nothing was changed" in refused.stderr
        assert f"Replace database {crm_db}" in refused.stdout
        assert "is then backed up (label pre-restore) and not dropped before that backup is listed" in refused.stdout
        assert table_fingerprints(pg.conninfo(crm_db)) == changed and old_copies(pg, crm_db) == []

        done = cli_with_input("restore", "latest", "--no-safety-backup", env=pg_env, answer=crm_db + "\n")
        assert done.returncode == 0, done.stderr
        assert f"into {crm_db}" in done.stdout and "previous database kept as" in done.stdout
        assert table_fingerprints(pg.conninfo(crm_db)) == at_backup
        [old] = old_copies(pg, crm_db)
        assert table_fingerprints(pg.conninfo(old)) == changed
        assert f"it will be kept as {old}" in done.stdout  # the name confirmed is the name used
    finally:
        for name in old_copies(pg, crm_db):
            drop_database(pg, name)


def test_restore_into_a_new_database_with_an_old_file_name(pg, crm_db, pg_env):
    from pgkeeper.catalog import list_backups
    from pgkeeper.storage.local import LocalStorage

    assert run_cli_here("backup", env=pg_env).returncode == 0  # set-up: the subject is the restore
    at_backup = table_fingerprints(pg.conninfo(crm_db))
    [m] = list_backups(LocalStorage(pg_env["BACKUP_DIR"]))
    change_data(pg, crm_db)
    changed = table_fingerprints(pg.conninfo(crm_db))
    copy = crm_db + "_copy"
    try:
        r = run_cli("restore", f"{m.backup_id}.sql.gz", "--into", copy, env=pg_env)  # no prompt: nothing replaced
        assert r.returncode == 0, r.stderr
        assert table_fingerprints(pg.conninfo(copy)) == at_backup
        assert table_fingerprints(pg.conninfo(crm_db)) == changed
    finally:
        drop_database(pg, copy)


def test_bad_input_is_one_line_and_changes_nothing(pg, crm_db, pg_env):
    assert run_cli_here("backup", env=pg_env).returncode == 0  # set-up: the subject is the restore
    before = table_fingerprints(pg.conninfo(crm_db))
    for args, code in ((["../etc", "--yes"], 2), (["backup_20240315_143022", "--yes"], 3),
                       (["latest", "--yes", "--target", "x;y"], 2)):
        r = run_cli("restore", *args, env=pg_env)
        assert r.returncode == code, r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("pgkeeper: error: "), r.stderr
        assert pg_env["POSTGRES_PASSWORD"] not in r.stderr + r.stdout
    assert table_fingerprints(pg.conninfo(crm_db)) == before

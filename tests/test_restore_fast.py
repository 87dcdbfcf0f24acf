"""`pgkeeper restore` imports only what its run needs: no FastAPI to record its parameters (its
plan, a pydantic model, included), no backup flow when no safety backup is taken. Recorded
parameters equal Prefect's own encoding; the parameter schema is Prefect's, built when read.

Checked through `sys.modules` of fresh processes and the values recorded, never through a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT, drop_database, run_cli_here

# Imported only for what a --into restore does not do: FastAPI (Prefect's parameter encoder) and
# the backup flow (a replace's safety backup).
HEAVY = ["fastapi", "pgkeeper.flows.backup"]
PROBE = ("import json, sys\n"
         "from pgkeeper.cli.main import main\n"
         "code = main(sys.argv[1:])\n"
         f"print(json.dumps({{'code': code, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n")
PLAN = ("from datetime import UTC, datetime\n"
        "from pgkeeper.manifest import DatabaseGrant, DatabaseProperties, StoredFile\n"
        "from pgkeeper.tasks.restore_steps import RestorePlan\n"
        "plan = RestorePlan(backup_id='backup_20240315_143022', source='local', location='/b', backup_database='crm',\n"
        "    finished_at=datetime(2024, 3, 15, 14, 30, 22, 123456, tzinfo=UTC), status='verified', size=10,\n"
        "    raw_size=None, compression='zstd', file=StoredFile(name='crm.dump.zst', size=10, sha256='ab'),\n"
        "    tables={'public.t': 3, 'app.\"Odd name\"': 0}, objects={'indexes': 2}, mode='new', target='crm2',\n"
        "    target_exists=False, target_size=None, shadow='crm2_restoring_abcdef', retire_as=None,\n"
        "    properties=DatabaseProperties(owner='o', encoding='UTF8', collate='C', ctype='C',\n"
        "        acl=[DatabaseGrant(grantee=None, privilege='CONNECT')], settings=['search_path=a, b']),\n"
        "    dump_settings={'client_encoding': 'UTF8'})\n")


def fresh(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, **(env or {})},
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_restore_records_its_parameters_as_prefect_does_without_fastapi():
    """The plan (a pydantic model) and the plain values are recorded as FastAPI's jsonable_encoder
    records them, and neither FastAPI nor the backup flow is imported on the way."""
    probe = ("import json, sys\n"
             "from pgkeeper.flows.restore import restore\n" + PLAN +
             "params = {'backup': 'latest', 'mode': 'new', 'target': 'crm2', 'jobs': 2, 'plan': plan,\n"
             "          'port': None, 'confirmed': True}\n"
             "recorded = restore.serialize_parameters(params)\n"
             "loaded = [m for m in ('fastapi', 'pgkeeper.flows.backup') if m in sys.modules]\n"
             "from fastapi.encoders import jsonable_encoder\n"
             "print(json.dumps({'same': recorded == {k: jsonable_encoder(v) for k, v in params.items()},\n"
             "                  'json': json.loads(json.dumps(recorded)) == recorded, 'loaded': loaded}))\n")
    assert fresh(probe) == {"same": True, "json": True, "loaded": []}


def test_the_restore_parameter_schema_is_prefect_s_built_when_first_read():
    probe = ("import json, sys\n"
             "from pgkeeper.flows.restore import restore\n"
             "from prefect.utilities.callables import parameter_schema\n"
             "schema = restore.parameters\n"
             "print(json.dumps({'same': schema == parameter_schema(restore.fn), 'plan': 'plan' in schema.properties,\n"
             "                  'name': restore.name}))\n")
    assert fresh(probe) == {"same": True, "plan": True, "name": "restore"}


def test_restore_into_a_new_database_imports_neither_fastapi_nor_the_backup_flow(pg, crm_db, pg_env):
    assert run_cli_here("backup", env=pg_env).returncode == 0  # set-up: the subject is the restore
    copy = crm_db + "_fast"
    try:
        assert fresh(PROBE, "restore", "latest", "--into", copy, env=pg_env) == {"code": 0, "loaded": []}
    finally:
        drop_database(pg, copy)

"""Deployments from prefect.yaml, applied the ordinary way: `prefect deploy --all`.

prefect.yaml is the single source of schedules. `pgkeeper setup` runs `prefect deploy --all`
on it only when something changed (the file, the time zone, the project directory) or a
deployment it lists is missing, so running set-up twice redeploys nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pgkeeper.errors import DeployFailed

DEPLOYED_HASH_VARIABLE = "pgkeeper_deployed"
WAL_DEPLOYMENTS = ("wal-ship/every-5-minutes", "base-backup/daily", "pitr-drill/weekly")


def default_prefect_yaml() -> Path:
    """The prefect.yaml in the current directory, else the one beside the pgkeeper package."""
    here = Path.cwd() / "prefect.yaml"
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[2] / "prefect.yaml"


def deployment_names(prefect_yaml: Path) -> list[str]:
    """'flow-name/deployment-name' for every deployment the file lists."""
    data = yaml.safe_load(prefect_yaml.read_text()) or {}
    names = []
    for d in data.get("deployments") or []:
        flow_file, _, func = d["entrypoint"].partition(":")
        names.append(f"{_flow_name(prefect_yaml.parent / flow_file, func)}/{d['name']}")
    return names


def _flow_name(path: Path, func: str) -> str:
    # The flow's name is in its decorator; reading the source avoids importing every flow.
    import ast

    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func:
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call):
                    for kw in dec.keywords:
                        if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                            return str(kw.value.value)
            return func.replace("_", "-")
    raise DeployFailed(f"{path} has no flow {func!r} (named in prefect.yaml)")


def missing_deployments(names: list[str]) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    missing = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_deployment_by_name(name)
            except ObjectNotFound:
                missing.append(name)
    return missing


def fingerprint(prefect_yaml: Path, settings: dict[str, Any]) -> str:
    h = hashlib.sha256(prefect_yaml.read_bytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def prefect_deploy_all(prefect_yaml: Path) -> None:
    """Run `prefect deploy --all` on the file, from its directory, without prompts."""
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_yaml)]
    proc = subprocess.run(cmd, cwd=prefect_yaml.parent, env=dict(os.environ), capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        raise DeployFailed(f"`prefect deploy --all` failed: {lines[-1] if lines else 'no output'}")


def apply_deployments(prefect_yaml: Path, settings: dict[str, Any]) -> str:
    """Deploy everything in prefect.yaml if needed; 'created', 'updated' or 'unchanged'."""
    from prefect.variables import Variable

    names = deployment_names(prefect_yaml)
    wanted = fingerprint(prefect_yaml, settings)
    missing = missing_deployments(names)
    if not missing and Variable.get(DEPLOYED_HASH_VARIABLE, default=None) == wanted:
        return "unchanged"
    prefect_deploy_all(prefect_yaml)
    Variable.set(DEPLOYED_HASH_VARIABLE, wanted, overwrite=True)
    return "created" if len(missing) == len(names) else "updated"


def set_paused(name: str, paused: bool) -> str:
    """Pause or resume deployment `name`; 'updated', 'unchanged' or 'absent'."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return "absent"
        if bool(deployment.paused) == paused:
            return "unchanged"
        (client.pause_deployment if paused else client.resume_deployment)(deployment.id)
    return "updated"

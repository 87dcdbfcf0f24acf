"""Running the service in the foreground: a process worker for the pgkeeper pool.

The worker is a child process; on Ctrl-C or SIGTERM it is stopped first, then (if this
command started it) the local Prefect server, because a worker whose API is gone may
ignore SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from pgkeeper.errors import PgkeeperError
from pgkeeper.settings import heartbeat_settings


def pool_exists(pool: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            return False
    return True


def stop_process(proc: subprocess.Popen, grace: float = 20) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(api_url: str, pool: str, limit: int | None, run_setup_first: bool, stop_server: bool) -> int:
    from pgkeeper.local_server import stop_local_server

    try:
        if run_setup_first:
            from pgkeeper.deployments.setup import run_setup

            run_setup(os.environ, report=lambda item, outcome: print(f"{outcome:>10}  {item}", flush=True))
        if not pool_exists(pool):
            raise PgkeeperError(f"work pool {pool!r} does not exist: run `pgkeeper setup` first")
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
               "--name", os.environ.get("PGKEEPER_WORKER_NAME") or f"pgkeeper-{os.uname().nodename}"]
        if limit:
            cmd += ["--limit", str(limit)]
        print(f"pgkeeper serving: worker for pool {pool!r} against {api_url} (UI at {api_url.removesuffix('/api')}); "
              "Ctrl-C stops it", flush=True)
        # Runs beat (every 30 s by default), so a run whose machine dies is marked Crashed
        # (automations.crash_automation); a deployment's job variables say the same.
        heartbeat, _ = heartbeat_settings(os.environ)
        env = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat), **os.environ, "PREFECT_API_URL": api_url}
        worker = subprocess.Popen(cmd, env=env)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return worker.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            stop_process(worker)
    finally:
        if stop_server:
            stop_local_server()

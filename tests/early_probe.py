"""Runs a `pgkeeper` command as the program runs it (a fresh process, so the early start can
happen) with a small probe around the early start's own functions, and reports what it did: the
backup id it forked a stream for, the child's pid, which backup the run adopted (None: today's
path) and main()'s exit code. Shared by tests/test_backup_early.py and test_base_backup_early.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.helpers import ROOT

# {module}: the early start's module; {cls}: its ForkedStream class; {at_fork}: lines run in
# spy_fork before the fork (`self` is the early start, `seen` the report). PROBE_DIE_AFTER_FORK
# makes the command SIGKILL itself right after the fork.
PROBE = """
import json, os, sys
import {module} as early

seen = {{"forked": False, "adopted": None, "child": None, "backup_id": None}}
report = sys.argv[1]
fork_stream, adopt = early.{cls}.fork_stream, early.adopt

def spy_fork(self):
    seen.update(forked=True, backup_id=self.backup_id)
{at_fork}
    fork_stream(self)
    seen["child"] = self.pid
    if os.environ.get("PROBE_DIE_AFTER_FORK"):
        with open(report, "w") as f:
            json.dump(seen, f)
        os.kill(os.getpid(), 9)

def spy_adopt(*args):
    found = adopt(*args)
    seen["adopted"] = found.backup_id if found else None
    return found

early.{cls}.fork_stream, early.adopt = spy_fork, spy_adopt
from pgkeeper.cli.main import main
try:
    seen["code"] = main(sys.argv[2:])
finally:
    seen["aside"] = getattr(early, "stepped_aside", None)  # why it stepped aside, where the module says
    with open(report, "w") as f:
        json.dump(seen, f)
"""


def probe_script(module: str, cls: str, at_fork: str = "    pass") -> str:
    return PROBE.format(module=module, cls=cls, at_fork=at_fork)


def run_probe(script: str, tmp_path: Path, argv: list[str], env: dict[str, str],  # noqa: ANN201
              background: bool = False, stdin: str | None = None):
    """(report, completed process) once the command ended (it must succeed); with `background`,
    (the running process, the report's path). `stdin`: what is typed at the command's prompt."""
    report = tmp_path / f"probe-{uuid.uuid4().hex[:6]}.json"
    full = [sys.executable, "-c", script, str(report), *argv]
    full_env = {**os.environ, **env}
    if background:
        return subprocess.Popen(full, env=full_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True), report
    out = subprocess.run(full, env=full_env, capture_output=True, text=True, timeout=300, cwd=ROOT, input=stdin)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(report.read_text()), out

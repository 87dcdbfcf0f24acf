"""The early start's waiting child (early_stream.WaitingChild, used by `pgkeeper base-backup`):
forked before the checks, it starts its tool at once and streams only when told the claimed id;
a start refused meanwhile kills it and its tool before anything was streamed.

Run in a fresh process (a fork from pytest's threaded process could inherit a held lock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT, alive, wait_for

SCRIPT = """
import json, os, sys, time
from pgkeeper import pgtools
from pgkeeper.early_stream import WaitingChild

out = sys.argv[1]

def prepare():
    tool = pgtools.Child(["sleep", "300"])  # dies with the child that started it, as pg_basebackup
    with open(out + ".tool", "w") as f:
        f.write(str(tool.proc.pid))
    return tool.proc.pid

def stream(backup_id, tool_pid, send):
    send({"progress": 1})
    return {"backup_id": backup_id, "tool": tool_pid, "streamer": os.getpid()}

def tool_pid():
    for _ in range(600):
        if os.path.exists(out + ".tool") and open(out + ".tool").read():
            return int(open(out + ".tool").read())
        time.sleep(0.05)
    raise SystemExit("the waiting child never started its tool")

refused = WaitingChild(prepare, stream)
refused_tool = tool_pid()
os.remove(out + ".tool")
refused_child = refused.pid
refused.stop()  # a check refused the start

told = WaitingChild(prepare, stream)
told_child = told.pid
pid, pipe = told.go("backup_20990101_000000_x")
messages = [json.loads(line) for line in pipe]
os.waitpid(pid, 0)
with open(out, "w") as f:
    json.dump({"refused_child": refused_child, "refused_tool": refused_tool, "told_child": told_child,
               "pid": pid, "messages": messages}, f)
"""


def test_a_waiting_child_streams_only_when_told_and_dies_with_its_tool_when_refused(tmp_path):
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(report)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(report.read_text())
    # Refused: the child is gone (reaped by stop) and the tool it started died with it.
    assert not alive(seen["refused_child"])
    wait_for(lambda: not alive(seen["refused_tool"]), 30, "the refused child's tool to die with it")
    # Told: the same child streams into the id it was given, its messages through the pipe.
    assert seen["pid"] == seen["told_child"]
    assert seen["messages"][0] == {"progress": 1}
    result = seen["messages"][-1]["result"]
    assert result["backup_id"] == "backup_20990101_000000_x" and result["streamer"] == seen["told_child"]

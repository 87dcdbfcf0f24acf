"""CPU-seconds of whole process trees: a contest's work is split between the command, the
PostgreSQL server's backends and (for pgkeeper) the Prefect API server, and on a 2-core machine
the sum of their CPU bounds the wall time from below (wall >= CPU / cores).

A tree's CPU so far is each living process's own time plus the time of the children it has
waited for (the kernel adds an exited child's time to its parent's cutime/cstime when the parent
reaps it: the postmaster reaps its backends, the benchmark its commands). So the difference of
two readings counts every process of the tree that ran in between, whether it lived through the
interval, was born in it or ended in it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")


def _processes() -> tuple[dict[int, float], dict[int, list[int]]]:
    """{pid: own + reaped children's CPU seconds}, {ppid: [child pids]} of every process now."""
    seconds: dict[int, float] = {}
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = text[text.rindex(")") + 2:].split()
        # fields[1] is ppid; [11..14] utime, stime, cutime, cstime (stat(5), counted from state)
        seconds[int(entry)] = sum(int(f) for f in fields[11:15]) / HZ
        children[int(fields[1])].append(int(entry))
    return seconds, children


def tree_seconds(roots: list[int]) -> float:
    """CPU seconds the trees under `roots` have used so far."""
    seconds, children = _processes()
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in seconds:
            continue
        seen.add(pid)
        total += seconds[pid]
        todo.extend(children.get(pid, []))
    return total


def postmaster_pid(datadir: Path) -> int:
    return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])


class CpuMeter:
    """CPU seconds used by this process's tree (its commands and the Prefect server it started)
    and by a PostgreSQL cluster's processes, between start() and stop()."""

    def __init__(self, datadir: Path) -> None:
        self.roots = [os.getpid(), postmaster_pid(datadir)]
        self._start = 0.0

    def start(self) -> None:
        self._start = tree_seconds(self.roots)

    def stop(self) -> float:
        return tree_seconds(self.roots) - self._start

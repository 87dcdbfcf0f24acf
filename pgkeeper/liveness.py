"""Who made a scratch or shadow database, and whether that process is provably gone.

A run killed outright (SIGKILL, OOM, power loss) never reaches its cleanup. Databases it made
carry a tag naming the host, the process (pid and its start time, so a recycled pid does not
count as alive) and the Prefect flow run; the next run drops those whose maker is provably dead
and leaves alone anything it cannot judge.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

_TAG = re.compile(r"host=(\S+) pid=(\d+) start=(\d+)(?: run=(\S+))?")


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces or parentheses: fields are counted after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_tag(run_id: str | None = None, pid: int | None = None) -> str:
    """The tag of this process (or of `pid`, a process of ours this one works for)."""
    pid = pid or os.getpid()
    tag = f"host={socket.gethostname()} pid={pid} start={process_start(pid) or 0}"
    return tag + (f" run={run_id}" if run_id else "")


def tag_run_id(text: str) -> str | None:
    m = _TAG.search(text or "")
    return m.group(4) if m else None


def maker_is_dead(text: str) -> bool:
    """True only when the tag in `text` names a process on this host that no longer runs."""
    m = _TAG.search(text or "")
    if not m or m.group(1) != socket.gethostname():
        return False
    pid, start = int(m.group(2)), int(m.group(3))
    return process_start(pid) != start


OWNER_FILE = ".owner"


def claim_dir(path: Path) -> None:
    """Tag a work directory with the process using it (see clear_dead_dirs)."""
    (path / OWNER_FILE).write_text(owner_tag())


def remove_claimed_dir(path: Path) -> None:
    """Remove a tagged work directory, its tag last: a process killed halfway leaves a directory
    that still names it, which the next clear_dead_dirs removes (rmtree alone could delete the tag
    first and leave an untagged directory no run would judge)."""
    import shutil

    try:
        entries = [p for p in path.iterdir() if p.name != OWNER_FILE]
    except OSError:
        return  # gone already
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    (path / OWNER_FILE).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        shutil.rmtree(path, ignore_errors=True)  # something appeared meanwhile: nobody claims it now


def clear_dead_dirs(root: Path, prefix: str, before_removal: Callable[[Path], None] | None = None) -> list[Path]:
    """Remove work directories under `root` named `prefix*` whose tagged process is gone (a run
    killed with SIGKILL leaves its decompressed dump behind); returns what was removed.
    `before_removal`: called with each such directory first (to undo what it records)."""
    removed = []
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return []
    for path in candidates:
        try:
            tag = (path / OWNER_FILE).read_text()
        except OSError:
            continue  # untagged: not ours to judge
        if maker_is_dead(tag):
            if before_removal is not None:
                before_removal(path)
            remove_claimed_dir(path)
            removed.append(path)
    return removed

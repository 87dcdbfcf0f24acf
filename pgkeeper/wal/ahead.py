"""Push-ahead: with a backlog, one wal-push call also archives the next few ready files.

PostgreSQL's archiver runs archive_command for one file at a time, and a new process per file
spends ~30 ms starting up before it touches the data. When segments queue up (a bulk load, a
restart after an outage), the call for the oldest one therefore also archives the next
`push_ahead` files PostgreSQL has marked ready (pg_wal/archive_status/*.ready), on all cores,
and leaves a marker for each. The archiver's own call for such a file then only checks the
marker and returns. This is pgBackRest's archive-async idea without a background process:
nothing is confirmed to PostgreSQL before it is durable in the spool.

A marker (`<spool>/.pushed-ahead/<walfile>`) holds the identity of the file that was read
(device, inode, size, mtime in ns) and is written only after the object is fsynced. A marker
that does not match the file PostgreSQL hands over (a replaced file, another cluster sharing
the spool) is ignored, and the full push with its content comparison runs instead. Losing a
marker (a crash) only means the full push runs too, and that accepts an identical duplicate.

No heavy imports here: the confirming call must stay a few milliseconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

MARKER_DIR = ".pushed-ahead"
READY = ".ready"


def file_identity(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _marker(spool: str, name: str) -> str:
    return os.path.join(spool, MARKER_DIR, name)


def claim(spool: str, name: str, wal_path: str) -> bool:
    """True if `name` was pushed ahead from exactly this file (the marker is then consumed)."""
    marker = _marker(spool, name)
    try:
        with open(marker) as f:
            recorded = f.read()
        if recorded != file_identity(wal_path):
            return False
        os.unlink(marker)
    except OSError:
        return False
    return True


def record(spool: str, name: str, identity: str) -> None:
    """Leave the marker for `name` (only after its object is durable). Not fsynced on purpose:
    a lost marker costs one full push later, never a wrong confirmation."""
    d = os.path.join(spool, MARKER_DIR)
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = os.path.join(d, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(identity)
    os.replace(tmp, _marker(spool, name))


def _archiver_order(name: str) -> tuple[bool, str]:
    # PostgreSQL archives timeline history files first, then the oldest segment.
    return (not name.endswith(".history"), name)


def ready_files(wal_path: str, spool: str, limit: int, valid: Callable[[str], bool]) -> list[tuple[str, str]]:
    """(name, path) of up to `limit` other files queued for archiving next to `wal_path`, in the
    order the archiver will ask for them, skipping those already pushed ahead."""
    if limit <= 0:
        return []
    wal_dir = os.path.dirname(wal_path)
    try:
        entries = os.listdir(os.path.join(wal_dir, "archive_status"))
    except OSError:
        return []  # not a pg_wal directory (a manual push): nothing to look ahead at
    own = os.path.basename(wal_path)
    names = sorted((e[:-len(READY)] for e in entries if e.endswith(READY)), key=_archiver_order)
    chosen: list[tuple[str, str]] = []
    for name in names:
        if len(chosen) == limit:
            break
        if name == own or not valid(name) or os.path.exists(_marker(spool, name)):
            continue
        chosen.append((name, os.path.join(wal_dir, name)))
    return chosen


def push_all(push_one: Callable[[str, str], object], own: tuple[str, str], extras: list[tuple[str, str]],
             spool: str, workers: int) -> None:
    """Push `own` and `extras` on `workers` threads, own first; mark each extra that landed.

    Only `own`'s failure is raised: an extra that fails is simply not marked, and its own
    archiver call will push it again and report the problem."""
    queue = [own, *extras]
    errors: dict[str, BaseException] = {}
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    return
                name, path = queue.pop(0)
            try:
                if (name, path) == own:
                    push_one(name, path)
                    continue
                before = file_identity(path)
                push_one(name, path)
                if file_identity(path) == before:
                    record(spool, name, before)
            except BaseException as exc:  # noqa: BLE001 - reported for own, dropped for extras
                errors[name] = exc

    threads = [threading.Thread(target=work) for _ in range(max(1, min(workers, len(queue))) - 1)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    if own[0] in errors:
        raise errors[own[0]]


def stale_markers(spool: str, older_than_s: float) -> list[str]:
    """Markers whose archiver call never came (e.g. archiving was reconfigured)."""
    d = os.path.join(spool, MARKER_DIR)
    try:
        entries = os.listdir(d)
    except OSError:
        return []
    cutoff = time.time() - older_than_s
    found = []
    for entry in entries:
        path = os.path.join(d, entry)
        try:
            if os.stat(path).st_mtime < cutoff:
                found.append(path)
        except FileNotFoundError:
            pass
    return found

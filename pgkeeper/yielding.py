"""Work that yields the CPU to something more urgent, without Prefect.

The pre-restore safety backup runs beside the shadow restore (tasks/safety.py). On a small machine
both want every core; the restore is what the user waits for, and `pg_restore -j2` leaves a core
idle for long stretches (one table's COPY or index build at a time), which a backup at the lowest
priority fills without taking much from it. So while work runs under `yielding_work`, the tools it
starts (pgtools.Child: pg_dump, pg_restore --list) begin at nice 19 and its server backends are
reniced to 19 (dumpstream), where this OS user may (a local server run by the same user, or root).
All of it is best effort: what could not be lowered is noted, never an error.

The work's own Python thread keeps its priority: it shares the GIL with the restore's threads (the
content proof hashes in Python), and a GIL holder that is seldom scheduled makes them wait for it
(measured, docs/performance.md section 4, seventh pass). Its CPU is the small part (zstd and
sha256, which run without the GIL); the server's COPY and pg_dump are the large one.

Nice 19 and not SCHED_IDLE: a backend at SCHED_IDLE that holds a lock or buffer the restore's
backends need would be even slower to let go; nice 19 still leaves the restore about 98% of a
contended core.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

LOWEST = 19  # nice value of yielding work
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


@dataclass
class Yielding:
    """One piece of yielding work: the processes it lowered, notes on what it could not lower (for
    the run's debug log), and whether it still yields."""
    notes: list[str] = field(default_factory=list)
    # The priority everything gets back: that of the thread that made the record.
    original: int = field(default_factory=lambda: os.getpriority(os.PRIO_PROCESS, 0))
    lowered: list[int] = field(default_factory=list)  # children and server backends at LOWEST
    done: bool = False  # stopped yielding: nothing more is lowered

    def stop(self) -> None:
        """Give the work's processes their priority back, as far as the OS lets this user (root
        may; others cannot raise a priority again): called once what it yielded to is done and
        waits for it, so that on a busy machine other work does not stretch that wait."""
        with _LOCK:
            if self.done:
                return
            self.done = True
            pids = list(self.lowered)
        for pid in pids:
            _raise_back(pid, self)


_LOCK = threading.Lock()
_CURRENT: ContextVar[Yielding | None] = ContextVar("pgkeeper_yielding", default=None)


def current() -> Yielding | None:
    """The Yielding record when the caller runs yielding work that still yields, else None."""
    record = _CURRENT.get()
    return record if record is not None and not record.done else None


@contextmanager
def yielding_work(record: Yielding) -> Iterator[Yielding]:
    """The block (in this thread and context: a Prefect subflow called in it included) runs as
    yielding work."""
    token = _CURRENT.set(record)
    try:
        yield record
    finally:
        _CURRENT.reset(token)


def _raise_back(pid: int, record: Yielding) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, pid, record.original)
    except ProcessLookupError:
        pass  # it has finished
    except OSError as exc:
        record.notes.append(f"{pid} stays at nice {LOWEST}: {exc.strerror}")
    else:
        record.notes.append(f"{pid} back at nice {record.original}")


def lower(pid: int, what: str, record: Yielding) -> bool:
    """Set a process to the lowest priority; False when not permitted (or when the work no longer
    yields)."""
    with _LOCK:
        if record.done:
            return False
        try:
            os.setpriority(os.PRIO_PROCESS, pid, LOWEST)
        except OSError as exc:  # EPERM/EACCES: another user's process; ESRCH: it has exited
            record.notes.append(f"{what} ({pid}) left at its priority: {exc.strerror}")
            return False
        record.lowered.append(pid)  # under the lock: stop() misses none
    record.notes.append(f"{what} ({pid}) at nice {LOWEST}")
    return True


def child_preexec(record: Yielding | None) -> Callable[[], None]:
    """For a child about to be forked by yielding work: a pre-exec step that lowers the child
    itself (so that it never runs a moment at the normal priority). Nothing otherwise."""
    if record is None:
        return lambda: None

    def lower_self() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, LOWEST)
        except OSError:
            pass
    return lower_self


def forked(record: Yielding | None, pid: int, name: str) -> None:
    """A child forked with `child_preexec(record)`: remember it, so that stop() raises it back;
    if stop() came between the fork and now, raise it back at once."""
    if record is None:
        return
    with _LOCK:
        if not record.done:
            record.lowered.append(pid)
            record.notes.append(f"{name} ({pid}) at nice {LOWEST}")
            return
    _raise_back(pid, record)


def local_backend(pid: int, host: str, user: str, database: str) -> bool:
    """Whether `pid`, a backend pid the server reported, is that backend on this machine: the server
    is reached locally (a socket directory or loopback) and the process's title names its role and
    database. A remote server's pid may be any local process: never renice on a guess."""
    if not (host.startswith("/") or host in LOCAL_HOSTS):
        return False
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return title.startswith("postgres: ") and f" {user} {database} " in title


def lower_backend(pid: int, host: str, user: str, database: str, record: Yielding) -> bool:
    """Renice a server backend of this work's when it is local; the note says what happened."""
    if not local_backend(pid, host, user, database):
        record.notes.append(f"server backend {pid} left at its priority: not a local process of this server")
        return False
    return lower(pid, "server backend", record)

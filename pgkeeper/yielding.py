"""Work that yields the CPU to something more urgent, without Prefect.

The pre-restore safety backup runs beside the shadow restore (tasks/safety.py). On a small machine
both want every core; the restore is what the user waits for, and `pg_restore -j2` leaves a core
idle for long stretches (one table's COPY or index build at a time), which a backup at the lowest
priority fills without taking anything from it. So the safety backup runs in a thread of its own
at nice 19: every thread it starts and every child it forks (pg_dump, pg_restore --list) inherit
that, and the dump's server backends are reniced too where this OS user may (a local server run by
the same user, or root). All of it is best effort: what could not be lowered is noted, never an error.

Nice 19 and not SCHED_IDLE: the backup's Python threads share the GIL with the restore's own
threads (the content proof hashes in Python); a thread that holds the GIL and is almost never
scheduled would make them wait. Nice 19 still gives the restore about 98% of a contended core.
A thread of its own, because an unprivileged process cannot raise a priority it lowered: a pooled
thread left at nice 19 would slow whatever task ran on it next.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

LOWEST = 19  # nice value of yielding work
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}

T = TypeVar("T")


@dataclass
class Yielding:
    """What the yielding work lowered, and what it could not (for the run's debug log)."""
    notes: list[str] = field(default_factory=list)


_CURRENT: ContextVar[Yielding | None] = ContextVar("pgkeeper_yielding", default=None)


def current() -> Yielding | None:
    """The Yielding record when the caller runs as yielding work, else None."""
    return _CURRENT.get()


def lower(tid_or_pid: int, what: str, record: Yielding | None) -> bool:
    """Set a thread (native id) or process to the lowest priority; False when not permitted."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid_or_pid, LOWEST)
    except OSError as exc:  # EPERM/EACCES: another user's process; ESRCH: it has exited
        if record is not None:
            record.notes.append(f"{what} ({tid_or_pid}) left at its priority: {exc.strerror}")
        return False
    if record is not None:
        record.notes.append(f"{what} ({tid_or_pid}) at nice {LOWEST}")
    return True


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


def lower_backend(pid: int, host: str, user: str, database: str, record: Yielding | None) -> bool:
    """Renice a server backend of this work's when it is local; the note says what happened."""
    if not local_backend(pid, host, user, database):
        if record is not None:
            record.notes.append(f"server backend {pid} left at its priority: not a local process of this server")
        return False
    return lower(pid, "server backend", record)


def run_yielding(fn: Callable[[], T], label: str) -> tuple[T, Yielding]:
    """Run `fn` in a new thread at the lowest priority, with the caller's context (a Prefect run's
    subflow stays its child); wait for it and return its result with what was lowered. Its error is
    raised here. The caller's own thread keeps its priority."""
    record = Yielding()
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        lower(threading.get_native_id(), f"{label}'s thread", record)
        _CURRENT.set(record)  # in this thread's copy of the context only
        try:
            result.append(fn())
        except BaseException as exc:  # raised in the caller's thread below
            failure.append(exc)

    worker = threading.Thread(target=contextvars.copy_context().run, args=(body,), name="yielding", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0], record

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
    """One piece of yielding work: what it lowered, what it could not (for the run's debug log),
    and whether it still yields."""
    notes: list[str] = field(default_factory=list)
    # The nice value of the thread that made the record (the work's, before it was lowered).
    original: int = field(default_factory=lambda: os.getpriority(os.PRIO_PROCESS, 0))
    backends: list[int] = field(default_factory=list)
    thread: int | None = None  # native id of the work's own thread
    done: bool = False  # stopped yielding: nothing more is lowered

    def stop(self) -> None:
        """Give the work its priority back, as far as the OS lets this user (root may; others
        cannot raise a priority again): called once what it yielded to is done and waits for it,
        so that on a busy machine the wait is not stretched by other work. Threads and children
        started from now on inherit the priority back from the work's thread."""
        with _LOCK:
            if self.done:
                return
            self.done = True
            alone = not any(not w.done for w in _ACTIVE)
        targets = [self.thread] if self.thread is not None else []
        if alone:  # no other yielding work in this process: every thread and child still lowered is this one's
            targets = [t for t in _lowered_threads_and_children() if t not in targets] + targets
        for pid in targets + self.backends:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, self.original)
            except OSError as exc:
                self.notes.append(f"{pid} stays at nice {LOWEST}: {exc.strerror}")
            else:
                self.notes.append(f"{pid} back at nice {self.original}")


_LOCK = threading.Lock()
_ACTIVE: list[Yielding] = []  # the records of the yielding work running in this process


def _lowered_threads_and_children() -> list[int]:
    """This process's threads at the lowest priority, and their children at it."""
    found: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            tid = int(task.name)
            kids = (task / "children").read_text().split()
        except (OSError, ValueError):
            continue
        found += [pid for pid in [tid, *map(int, kids)] if _nice(pid) == LOWEST]
    return found


def _nice(pid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None


_CURRENT: ContextVar[Yielding | None] = ContextVar("pgkeeper_yielding", default=None)


def current() -> Yielding | None:
    """The Yielding record when the caller runs as yielding work, else None."""
    return _CURRENT.get()


def lower(tid_or_pid: int, what: str, record: Yielding, backend: bool = False) -> bool:
    """Set a thread (native id) or process to the lowest priority; False when not permitted
    (or when the work no longer yields)."""
    with _LOCK:
        if record.done:
            return False
        try:
            os.setpriority(os.PRIO_PROCESS, tid_or_pid, LOWEST)
        except OSError as exc:  # EPERM/EACCES: another user's process; ESRCH: it has exited
            record.notes.append(f"{what} ({tid_or_pid}) left at its priority: {exc.strerror}")
            return False
        if backend:  # stop() gives it back: under the lock, so that none is missed
            record.backends.append(tid_or_pid)
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


def lower_backend(pid: int, host: str, user: str, database: str, record: Yielding) -> bool:
    """Renice a server backend of this work's when it is local; the note says what happened."""
    if not local_backend(pid, host, user, database):
        record.notes.append(f"server backend {pid} left at its priority: not a local process of this server")
        return False
    return lower(pid, "server backend", record, backend=True)


def run_yielding(fn: Callable[[], T], label: str, record: Yielding | None = None) -> tuple[T, Yielding]:
    """Run `fn` in a new thread at the lowest priority, with the caller's context (a Prefect run's
    subflow stays its child); wait for it and return its result with what was lowered. Its error is
    raised here. The caller's own thread keeps its priority. `record.stop()`, from any thread, ends
    the yielding (a record stopped before the work starts never lowers anything)."""
    record = record or Yielding()
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        record.thread = threading.get_native_id()
        lower(record.thread, f"{label}'s thread", record)
        _CURRENT.set(record)  # in this thread's copy of the context only
        try:
            result.append(fn())
        except BaseException as exc:  # raised in the caller's thread below
            failure.append(exc)

    with _LOCK:
        _ACTIVE.append(record)
    try:
        worker = threading.Thread(target=contextvars.copy_context().run, args=(body,), name="yielding",
                                  daemon=True)
        worker.start()
        worker.join()
    finally:
        with _LOCK:
            _ACTIVE.remove(record)
    if failure:
        raise failure[0]
    return result[0], record

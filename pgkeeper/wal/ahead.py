"""Push-ahead: with a backlog, one wal-push call also archives the next few ready files.

PostgreSQL's archiver runs archive_command for one file at a time, and a new process per file
spends ~30 ms starting up before it touches the data. When segments queue up (a bulk load, a
restart after an outage), the call for the oldest one therefore also archives the next
`push_ahead` files PostgreSQL has marked ready (pg_wal/archive_status/*.ready), on all cores,
and leaves a marker for each. The archiver's own call for such a file then only checks the
marker and returns. This is pgBackRest's archive-async idea without a background process:
nothing is confirmed to PostgreSQL before it is durable in the spool.

Then the call forks a child that goes on with the files that become ready, keeping at most
`push_ahead` pushed and unclaimed, and exits when none are left: compression goes on while the
archiver runs its next calls (as pgBackRest's async archive-push does with its own process),
instead of every ninth call doing nine files while the eight calls between leave a core idle.
The child never takes the file the archiver is on (the oldest ready one, when not pushed ahead).
A call for a file in flight waits for its marker while the child lives (`.<walfile>.inflight`
names the child's lock file, which it holds with flock; the kernel drops it if it dies), and
pushes the file itself otherwise. The in-flight file is itself locked by the child until the
file's marker is written, so the shell claim in archive_command waits on it with `flock -s`
rather than starting Python to wait (wal/command.py).

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
    """Device, inode, size and mtime, spelt as `stat -L` prints IDENTITY_FORMAT, so that
    the shell claim in archive_command (wal/command.py) can compare a marker without Python."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9:09d}"


def config_stamp(config_path: str | None) -> str:
    """The identity of the WAL config file a call read (taken before reading it), for its markers:
    a marker made under another version of the config (say, another spool) then never matches
    in the shell claim, which checks the config file's identity too; "" without a config file."""
    if not config_path:
        return ""
    try:
        return file_identity(config_path)
    except OSError:
        return ""


# A marker is one line, each identity followed by SEPARATOR, as `stat -L --printf` with
# IDENTITY_FORMAT + SEPARATOR prints the WAL file and the config: the shell claim reads it with
# the `read` builtin (one process fewer per segment than `$(cat ...)`), and `read` needs the newline.
IDENTITY_FORMAT = "%d:%i:%s:%.9Y"
SEPARATOR = "/"  # not special to sh, never in a number: the claim needs no quoting for it


def _content(identity: str, stamp: str) -> str:
    return f"{identity}{SEPARATOR}{stamp}{SEPARATOR}\n" if stamp else f"{identity}{SEPARATOR}\n"


def _recorded_identity(text: str) -> str:
    """The WAL file's identity in a marker: this format's, or the two lines older versions wrote."""
    return text.split("\n", 1)[0].split(SEPARATOR, 1)[0]


def _marker(spool: str, name: str) -> str:
    return os.path.join(spool, MARKER_DIR, name)


INFLIGHT = ".inflight"
WAIT_SECONDS = 120.0
ROOM_WAIT_SECONDS = 10.0  # a child waits this long for the archiver to claim before it stops


def _inflight(spool: str, name: str) -> str:
    return os.path.join(spool, MARKER_DIR, f".{name}{INFLIGHT}")


def lock_held(path: str) -> bool:
    """True while some process holds a flock on `path` (a shared probe, released at once)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock we got
    return False


def _pusher_alive(spool: str, name: str) -> bool:
    """True while a child pushing `name` ahead is alive (it holds the lock its marker names)."""
    try:
        with open(_inflight(spool, name)) as f:
            lock = f.read()
    except OSError:
        return False
    return lock_held(os.path.join(spool, MARKER_DIR, lock))


def claim(spool: str, name: str, wal_path: str) -> bool:
    """True if `name` was pushed ahead from exactly this file (the marker is then consumed);
    a file a live child is pushing ahead is waited for."""
    marker = _marker(spool, name)
    deadline = None
    while not os.path.exists(marker) and _pusher_alive(spool, name):
        deadline = deadline or time.monotonic() + WAIT_SECONDS
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    try:
        with open(marker) as f:
            recorded = _recorded_identity(f.read())  # this call reads its config itself: the file's own
        if recorded != file_identity(wal_path):
            return False
        os.unlink(marker)
    except OSError:
        return False
    return True


def record(spool: str, name: str, identity: str, stamp: str = "") -> None:
    """Leave the marker for `name` (only after its object is durable): the file's identity, then
    the config's (`config_stamp`). Not fsynced on purpose: a lost marker costs one full push
    later, never a wrong confirmation."""
    d = os.path.join(spool, MARKER_DIR)
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = os.path.join(d, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(_content(identity, stamp))
    os.replace(tmp, _marker(spool, name))


def _archiver_order(name: str) -> tuple[bool, str]:
    # PostgreSQL archives timeline history files first, then the oldest segment.
    return (not name.endswith(".history"), name)


def ready_files(wal_path: str, spool: str, limit: int, valid: Callable[[str], bool],
                skip_current: bool = False) -> list[tuple[str, str]]:
    """(name, path) of up to `limit` other files queued for archiving next to `wal_path`, in the
    order the archiver will ask for them, skipping those already pushed ahead or in flight.
    With `skip_current`, also the first one in that order when it is not pushed ahead: the
    archiver is pushing it itself (a child working beside the archiver must not race it)."""
    if limit <= 0:
        return []
    wal_dir = os.path.dirname(wal_path)
    try:
        entries = os.listdir(os.path.join(wal_dir, "archive_status"))
    except OSError:
        return []  # not a pg_wal directory (a manual push): nothing to look ahead at
    own = os.path.basename(wal_path)
    names = sorted((e[:-len(READY)] for e in entries if e.endswith(READY)), key=_archiver_order)
    if skip_current and names and not os.path.exists(_marker(spool, names[0])):
        names = names[1:]
    chosen: list[tuple[str, str]] = []
    for name in names:
        if len(chosen) == limit:
            break
        if name == own or not valid(name) or os.path.exists(_marker(spool, name)) \
                or os.path.exists(_inflight(spool, name)):
            continue
        chosen.append((name, os.path.join(wal_dir, name)))
    return chosen


def on_threads(items: list[tuple[str, str]], handle: Callable[[tuple[str, str]], None], workers: int) -> None:
    """`handle` each item in order on `workers` threads, this one included (no executor import on
    the archiver's path). `handle` must not raise."""
    queue = list(items)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    return
                item = queue.pop(0)
            handle(item)

    threads = [threading.Thread(target=work) for _ in range(max(1, min(workers, len(queue))) - 1)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()


def push_all(push_one: Callable[[str, str], object], own: tuple[str, str], extras: list[tuple[str, str]],
             spool: str, workers: int, stamp: str = "") -> None:
    """Push `own` and `extras` on `workers` threads, own first; mark each extra that landed.

    Only `own`'s failure is raised: an extra that fails is simply not marked, and its own
    archiver call will push it again and report the problem."""
    errors: dict[str, BaseException] = {}

    def push(item: tuple[str, str]) -> None:
        name, path = item
        try:
            if item == own:
                push_one(name, path)
                return
            before = file_identity(path)
            push_one(name, path)
            if file_identity(path) == before:
                record(spool, name, before, stamp)
        except BaseException as exc:  # noqa: BLE001 - reported for own, dropped for extras
            errors[name] = exc

    on_threads([own, *extras], push, workers)
    if own[0] in errors:
        raise errors[own[0]]


def _unclaimed(spool: str) -> int:
    try:
        return sum(1 for e in os.listdir(os.path.join(spool, MARKER_DIR)) if not e.startswith("."))
    except OSError:
        return 0


def continue_in_background(push_one: Callable[[str, str], object], wal_path: str, spool: str, limit: int,
                           valid: Callable[[str], bool], workers: int, stamp: str = "") -> None:
    """Fork a child that keeps pushing the files that become ready, at most `limit` pushed and
    unclaimed at a time, each marked in flight first; return at once in the parent. The child
    stops when no file is left to push ahead, or when the archiver claims nothing for a while."""
    import fcntl

    d = os.path.join(spool, MARKER_DIR)
    lock_name = f".pusher-{os.getpid()}-{os.urandom(4).hex()}.lock"
    lock_path = os.path.join(d, lock_name)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        pid = os.fork()
    except OSError:
        return  # an optimisation only: the archiver's own calls push the files
    if pid != 0:
        os.close(fd)
        return
    try:  # the child: detached, silent, holding only its lock
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        os.closerange(3, fd)
        os.closerange(fd + 1, 1 << 16)
        waited = time.monotonic()
        while time.monotonic() - waited < ROOM_WAIT_SECONDS:
            room = limit - _unclaimed(spool)
            if room <= 0:
                time.sleep(0.01)  # the archiver is claiming: wait for room
                continue
            batch = ready_files(wal_path, spool, room, valid, skip_current=True)
            if not batch:
                break
            held = {name: _mark_in_flight(spool, name, lock_name) for name, _path in batch}
            _push_batch(push_one, batch, held, spool, workers, os.path.dirname(wal_path), stamp)
            waited = time.monotonic()
    finally:
        try:
            os.unlink(lock_path)
        finally:
            os._exit(0)


def _mark_in_flight(spool: str, name: str, lock_name: str) -> int:
    """Name `name` in flight (its file says which child's lock to ask) and return the descriptor
    of that file, locked exclusively until the push is over: the shell claim waits on that lock
    (`flock -s`) instead of starting Python to wait for the marker. Locked before it appears, so
    no claim can find it unlocked while the push is still going."""
    import fcntl

    path = _inflight(spool, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, lock_name.encode())
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unmark(spool: str, batch: list[tuple[str, str]]) -> None:
    for name, _path in batch:
        try:
            os.unlink(_inflight(spool, name))
        except FileNotFoundError:
            pass


def _push_batch(push_one: Callable[[str, str], object], batch: list[tuple[str, str]], held: dict[str, int],
                spool: str, workers: int, wal_dir: str, stamp: str = "") -> None:
    """Push each file of `batch` on `workers` threads; mark each that landed and is still waiting
    for the archiver (a marker for a file it archived meanwhile would never be claimed). `held`:
    the locked in-flight file of each name (_mark_in_flight), released once its marker is there."""
    def push(item: tuple[str, str]) -> None:
        name, path = item
        try:
            before = file_identity(path)
            push_one(name, path)
            if file_identity(path) == before and \
                    os.path.exists(os.path.join(wal_dir, "archive_status", name + READY)):
                record(spool, name, before, stamp)
        except BaseException:  # noqa: BLE001, S110 - the archiver's own call pushes it and reports
            pass
        finally:
            _unmark(spool, [item])
            os.close(held.pop(name))  # wakes a claim waiting in the shell: the marker is there

    on_threads(batch, push, workers)


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

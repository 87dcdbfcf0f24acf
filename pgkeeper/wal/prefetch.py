"""Fetch-ahead for recovery: one wal-fetch call starts a prefetcher, later calls take from its queue.

PostgreSQL's startup process runs restore_command for one segment at a time and replays it
before asking for the next, so each segment used to cost a new Python process that found,
read, decompressed and checked it while replay waited (pgBackRest's archive-get async does
the same trick as this module, with a background process filling a spool queue).

With a queue configured (`fetch_queue`, `fetch_ahead` in the WAL config; pitr sets both), a
wal-fetch call for segment N that finds no prefetcher running starts one, detached, which
fetches N+1, N+2, ... on two threads (spool first, then S3, each checked against the sha256
its object is named with) into the queue, keeping at most `fetch_ahead` segments there,
complete or being written: the queue's disk use is bounded by fetch_ahead x segment size.
The call for N+1 then takes its file from the queue: it hashes it again (a queue left by a
killed process is never trusted) and hard-links it to %p; the queue keeps the segment last
taken (counted in the bound) until the next one is taken, because PostgreSQL asks for it once
more at the end of recovery. A file that fails the check is removed and the segment fetched
from the archive as before. pitr's restore_command first tries the same take in the shell
(wal/command.py, `shell_take`: link, openssl's sha256 against the name's, fsync), so most calls
never start Python; that take leaves a `.taken-<walfile>` marker, and the prefetcher itself drops
the segments before the newest one taken and fetches on (a Python call still does both too).

The queue lives beside the data directory (pitr: `.<data dir>.pgkeeper-recovery/wal-queue`),
never in pg_wal, and its files are named `<walfile>-<sha256>.fetched`, which PostgreSQL and
pgkeeper never take for WAL; files being written are hidden temp files. The prefetcher stops
at the first segment the archive does not have (the end of the WAL: recovery ends there and
PostgreSQL is told "not found" only by a wal-fetch call that looked in the archive itself),
when nothing is taken for IDLE_SECONDS (it then empties the queue), as soon as the queue
directory is gone (pitr removes it with the recovery settings after promotion) and, when it was
started in a data directory under recovery (PostgreSQL runs restore_command there; pitr starts
the first prefetcher there too), once the server removed recovery.signal: recovery is over, and
it empties the queue then, even if pitr itself was killed.

Coordination is through the directory only: `.lock` (flock, held by the live prefetcher; the
kernel drops it when the process dies), `.<walfile>.inflight` (a segment being fetched: a call
for it waits rather than fetch it twice), `.restart` (a call that had to fetch a segment
itself tells the prefetcher where replay is), `.end` (the first segment the archive lacks) and
`.taken-<walfile>` (a take by the shell: replay is at that segment).
"""

from __future__ import annotations

import os
import sys
import time

from pgkeeper.wal.naming import segment_name

SUFFIX = ".fetched"
LOCK = ".lock"
RESTART = ".restart"
END = ".end"
INFLIGHT = ".inflight"
TAKEN = ".taken-"
SIGNAL = "recovery.signal"  # PostgreSQL removes it when archive recovery ends
IDLE_SECONDS = 30.0
WAIT_SECONDS = 120.0  # a call waits this long at most for a segment the prefetcher is fetching
WORKERS = 2


def is_plain_segment(name: str) -> bool:
    """000000010000000A000000FF: the files worth fetching ahead (not .history/.partial/.backup)."""
    return len(name) == 24 and all(c in "0123456789ABCDEF" for c in name)


def position(name: str, segment_size: int) -> tuple[int, int]:
    per_log = 0x100000000 // segment_size
    return int(name[:8], 16), int(name[8:16], 16) * per_log + int(name[16:24], 16)


class Queue:
    """The queue directory and its small protocol (no heavy imports: every wal-fetch reads it)."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit

    def _p(self, entry: str) -> str:
        return os.path.join(self.path, entry)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def entries(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except FileNotFoundError:
            return []

    # -- the prefetcher's liveness ----------------------------------------------------------

    def prefetcher_alive(self) -> bool:
        """True while a prefetcher holds the lock."""
        from pgkeeper.wal.ahead import lock_held

        return lock_held(self._p(LOCK))

    def acquire(self) -> int | None:
        """The exclusive lock as an open fd (held until the process ends), or None if another
        prefetcher has it. Retried briefly: a wal-fetch probe holds it for microseconds."""
        import fcntl

        fd = os.open(self._p(LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        for _ in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                time.sleep(0.01)
        os.close(fd)
        return None

    # -- what is queued -----------------------------------------------------------------------

    def queued(self, entries: list[str] | None = None) -> dict[str, str]:
        """{walfile: entry} of complete files in the queue."""
        found = {}
        for e in self.entries() if entries is None else entries:
            if e.endswith(SUFFIX) and not e.startswith("."):
                wal, dash, sha = e[:-len(SUFFIX)].rpartition("-")
                if dash and len(sha) == 64:
                    found[wal] = e
        return found

    def inflight(self, name: str) -> bool:
        return os.path.exists(self._p(f".{name}{INFLIGHT}"))

    def end(self) -> str | None:
        try:
            with open(self._p(END)) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def discard_older(self, name: str, segment_size: int, entries: list[str]) -> None:
        """Drop queued segments of `name`'s timeline before it: replay is past them."""
        tli, segno = position(name, segment_size)
        for wal, entry in self.queued(entries).items():
            if is_plain_segment(wal):
                t, s = position(wal, segment_size)
                if t == tli and s < segno:
                    _unlink(self._p(entry))

    # -- a wal-fetch call ---------------------------------------------------------------------

    def take(self, name: str, dest: str, warn) -> int | None:  # noqa: ANN001 - a print-like callable
        """Move the checked queued copy of `name` to `dest`: its size, or None when the queue
        has no good copy (a segment being fetched by a live prefetcher is waited for)."""
        deadline = None
        while True:
            entries = self.entries()
            entry = self.queued(entries).get(name)
            if entry is not None:
                size = self._move_checked(name, entry, dest, warn)
                if size is not None:
                    return size
                continue  # refused and removed: look again (it may be refetched meanwhile)
            if f".{name}{INFLIGHT}" not in entries or not self.prefetcher_alive():
                return None
            deadline = deadline or time.monotonic() + WAIT_SECONDS
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)

    def _move_checked(self, name: str, entry: str, dest: str, warn) -> int | None:  # noqa: ANN001
        import hashlib

        path = self._p(entry)
        want = entry[len(name) + 1:-len(SUFFIX)]
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None  # taken away meanwhile (the prefetcher emptied an idle queue)
        try:
            data = _read_all(fd)
            if hashlib.sha256(data).hexdigest() != want:
                warn(f"warning: the queued copy of {name} ({path}) fails its checksum: refetching it")
                _unlink(path)
                return None
            # Linked, not moved: the queue keeps the segment last taken (until the next one is taken:
            # discard_older), because at the end of recovery PostgreSQL asks for it once more. It
            # still counts against the limit, and is hashed again like any queued file if taken.
            tmp = os.path.join(os.path.dirname(os.path.abspath(dest)), f".{os.path.basename(dest)}.tmp-{os.getpid()}")
            try:
                _unlink(tmp)
                os.link(path, tmp)
                os.replace(tmp, dest)
                linked = os.fstat(fd).st_ino == os.stat(dest).st_ino
            except FileNotFoundError:
                _unlink(tmp)
                return None
            except OSError:  # another file system (a symlinked pg_wal): copy what was checked
                _unlink(tmp)
                linked = False
            if linked:
                os.fsync(fd)  # cheap: the prefetcher fsynced it already
                from pgkeeper.storage.atomic import fsync_dir  # light: os and contextlib only

                fsync_dir(os.path.dirname(os.path.abspath(dest)))
            else:
                from pathlib import Path  # not on the common path: pathlib and typing cost a call ~10 ms

                from pgkeeper.storage.atomic import atomic_write_bytes

                atomic_write_bytes(Path(dest), data)
            return len(data)
        finally:
            os.close(fd)

    def after_fetch(self, name: str, segment_size: int, location: list[str], had_to_fetch: bool) -> None:
        """After `name` went to PostgreSQL: keep the prefetcher going from there."""
        if not is_plain_segment(name) or self.limit <= 0 or not self.exists():
            return
        entries = self.entries()
        self.discard_older(name, segment_size, entries)
        if self.prefetcher_alive():
            if had_to_fetch:  # replay is not where the prefetcher thought: tell it
                _write_small(self._p(RESTART), name)
            return
        end = self.end()
        if end and is_plain_segment(end) and end[:8] == name[:8] and end > name:
            return  # the archive ends there: everything up to it is queued or on its way
        start(location, name, segment_size)


def start(location: list[str], name: str, segment_size: int) -> None:
    """Start a detached prefetcher (its own session, no inherited descriptors, silent)."""
    import subprocess

    flags = ["-S"] if sys.flags.no_site else []
    subprocess.Popen([sys.executable, *flags, "-m", "pgkeeper.wal.prefetch", *location, name, str(segment_size)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     close_fds=True, start_new_session=True)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    while size > 0:
        chunk = os.read(fd, size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_small(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# -- the prefetcher process ----------------------------------------------------------------------

def prefetch(cfg, queue: Queue, after: str, segment_size: int) -> None:  # noqa: ANN001 - a WalConfig
    """Keep the queue filled with the segments after `after` until the end, idleness or removal."""
    import threading
    from pathlib import Path

    from pgkeeper.storage.atomic import atomic_file
    from pgkeeper.wal.fetch import Fetcher

    fetcher = Fetcher(cfg)
    tli, next_no = position(after, segment_size)
    next_no += 1
    inflight: dict[str, threading.Thread] = {}
    outcome: dict[str, str] = {}  # name -> "queued" | "missing" | "failed"
    end_no = None
    last_progress = time.monotonic()
    occupied_before = None
    # Started in a data directory under recovery (the cwd restore_command runs in): stop when it ends.
    recovering = os.path.abspath(SIGNAL) if os.path.exists(SIGNAL) else None

    def work(name: str) -> None:
        try:
            got = fetcher.fetch(name)
            if got is None:
                outcome[name] = "missing"
                return
            raw, sha = got
            with atomic_file(Path(queue.path) / f"{name}-{sha}{SUFFIX}") as f:
                f.write(raw)
            outcome[name] = "queued"
        except BaseException:  # noqa: BLE001 - the call for it fetches it itself and reports why
            outcome[name] = "failed"
        finally:
            _unlink(queue._p(f".{name}{INFLIGHT}"))

    while queue.exists():
        for name in [n for n, t in inflight.items() if not t.is_alive()]:
            del inflight[name]
            result = outcome.pop(name, "failed")
            _, segno = position(name, segment_size)
            if result == "missing" and (end_no is None or segno < end_no):
                end_no = segno
                _write_small(queue._p(END), name)
            elif result == "failed":
                return _drain(inflight)  # e.g. a full disk or S3 down: leave it to the calls
            last_progress = time.monotonic()
        try:
            with open(queue._p(RESTART)) as f:
                restart = f.read().strip()
            os.unlink(queue._p(RESTART))
            if is_plain_segment(restart):
                tli, next_no = position(restart, segment_size)
                next_no += 1
                end_no = None
        except OSError:
            pass
        entries = queue.entries()
        if moved_on(queue, entries, segment_size):
            last_progress = time.monotonic()
            entries = queue.entries()
        if recovering and not os.path.exists(recovering):
            return _empty(queue, inflight)  # promoted: nothing more is taken from the queue
        queued = queue.queued(entries)
        occupied = len(queued) + len(inflight)
        if occupied != occupied_before:
            occupied_before = occupied
            last_progress = time.monotonic()
        if end_no is not None and next_no >= end_no and not inflight and not recovering:
            return None  # (under recovery it stays, to drop taken segments and empty the queue at the end)
        while len(inflight) < WORKERS and occupied < queue.limit and (end_no is None or next_no < end_no):
            name = segment_name(tli, next_no, segment_size)
            next_no += 1
            if name in queued or name in inflight:
                continue
            open(queue._p(f".{name}{INFLIGHT}"), "w").close()
            t = threading.Thread(target=work, args=(name,), daemon=True)
            inflight[name] = t
            t.start()
            occupied += 1
        if time.monotonic() - last_progress > IDLE_SECONDS:
            return _empty(queue, inflight)  # recovery ended or stopped: nothing more is taken
        time.sleep(0.02)
    return _drain(inflight)


def moved_on(queue: Queue, entries: list[str], segment_size: int) -> bool:
    """Take in the shell takes' markers: drop the queued segments before the newest one taken
    (it stays: PostgreSQL asks for it again at the end of recovery). True if there were any."""
    taken = [e for e in entries if e.startswith(TAKEN)]
    segments = [e[len(TAKEN):] for e in taken if is_plain_segment(e[len(TAKEN):])]
    if segments:
        queue.discard_older(max(segments, key=lambda n: position(n, segment_size)), segment_size, entries)
    for e in taken:
        _unlink(queue._p(e))
    return bool(taken)


def _empty(queue: Queue, inflight: dict) -> None:
    _drain(inflight)
    for entry in queue.queued().values():
        _unlink(queue._p(entry))


def _drain(inflight: dict) -> None:
    for t in inflight.values():
        t.join(timeout=60)


def clear_leftovers(queue: Queue) -> None:
    """Remove what a killed prefetcher left: in-flight markers and hidden temp files (we hold the
    lock, so nobody else is writing)."""
    for e in queue.entries():
        if e.startswith(".") and (e.endswith(INFLIGHT) or ".tmp-" in e):
            _unlink(queue._p(e))


def main(argv: list[str]) -> int:
    from pgkeeper.wal import config
    from pgkeeper.wal.push import quick_args

    location, (after, size) = argv[:-2], argv[-2:]
    args = quick_args([*location, "x"])
    if args is None or not is_plain_segment(after):
        return 2
    cfg = config.load(args.config, spool=args.spool, repo=args.repo)
    if not cfg.fetch_queue or cfg.fetch_ahead <= 0:
        return 0
    queue = Queue(cfg.fetch_queue, cfg.fetch_ahead)
    if not queue.exists():
        return 0  # never created here: gone means recovery is over
    lock = queue.acquire()
    if lock is None:
        return 0  # another prefetcher is at work
    try:
        clear_leftovers(queue)
        _unlink(queue._p(END))
        prefetch(cfg, queue, after, int(size))
    finally:
        os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

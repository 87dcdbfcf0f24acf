"""wal-fetch's prefetch queue (wal/prefetch.py), as PostgreSQL runs it: separate processes, one
call per segment, the prefetcher detached. Segments here are 1 MB (a valid WAL segment size),
archived straight into a spool."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgkeeper.tasks.recovery import remove_recovery_dir
from pgkeeper.wal.command import shell_take
from pgkeeper.wal.config import WalConfig, write
from pgkeeper.wal.naming import is_wal_name, segment_name
from pgkeeper.wal.prefetch import LOCK, SUFFIX, Queue
from pgkeeper.wal.spool import LocalWalStore
from tests.helpers import run_cli

SIZE = 1 << 20
AHEAD = 3


def seg(n: int) -> str:
    return segment_name(1, n, SIZE)


def content(n: int) -> bytes:
    return n.to_bytes(4, "big") * 4096 + os.urandom(64) + bytes(SIZE - 16384 - 64)


class Archive:
    def __init__(self, base: Path, numbers: list[int]) -> None:
        self.base = base
        self.queue = base / ".data.pgkeeper-recovery" / "wal-queue"
        self.queue.parent.mkdir(parents=True)
        self.config = base / "wal.json"
        self.datadir = base / "data"  # where restore_command runs: a data directory under recovery
        (self.datadir / "pg_wal").mkdir(parents=True)
        (self.datadir / "recovery.signal").touch()
        write(self.config, WalConfig(spool=str(base / "spool"), fetch_ahead=AHEAD, fetch_queue=str(self.queue)))
        store = LocalWalStore(base / "spool")
        self.data = {}
        for n in numbers:
            self.data[n] = content(n)
            store.put(seg(n), self.data[n])

    def fetch(self, n: int) -> tuple[int, str, bytes | None]:
        out = self.base / f"out-{n}"
        r = run_cli("wal-fetch", "--config", str(self.config), seg(n), str(out))
        data = out.read_bytes() if out.exists() else None
        out.unlink(missing_ok=True)
        return r.returncode, r.stderr, data

    def restore_command(self, n: int) -> tuple[int, str, bytes | None]:
        """Segment n as PostgreSQL gets it from pitr's restore_command: the shell take, else wal-fetch
        (each such Python start is counted in python-calls.log), run by sh in a data directory
        under recovery with %f and %p expanded, after removing %p (PostgreSQL does both)."""
        take = shell_take(str(self.queue))
        assert take is not None, "openssl is missing: no shell take"
        fetch = (f"{{ echo %f >> {shlex.quote(str(self.base / 'python-calls.log'))}; {shlex.quote(sys.executable)} "
                 f"-m pgkeeper.cli.main wal-fetch --config {shlex.quote(str(self.config))} %f %p; }}")
        dest = self.datadir / "pg_wal" / "RECOVERYXLOG"
        dest.unlink(missing_ok=True)
        command = f"{{ {take} || {fetch}; }}".replace("%f", seg(n)).replace("%p", "pg_wal/RECOVERYXLOG")
        r = subprocess.run(["sh", "-c", command], cwd=self.datadir, capture_output=True, text=True, timeout=120)
        return r.returncode, r.stderr, dest.read_bytes() if dest.exists() else None

    def python_calls(self) -> list[str]:
        log = self.base / "python-calls.log"
        return log.read_text().split() if log.exists() else []

    def queued(self) -> list[str]:
        return sorted(e for e in os.listdir(self.queue) if e.endswith(SUFFIX) and not e.startswith("."))

    def prefetchers(self) -> list[int]:
        """PIDs of prefetchers started for this archive (found by its unique config path)."""
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"pgkeeper.wal.prefetch" in cmd and str(self.config).encode() in cmd:
                    found.append(int(pid))
        return found

    def wait_idle(self, timeout: float = 60) -> None:
        """Until the prefetcher reached the end of the archive and stopped."""
        deadline = time.monotonic() + timeout
        while not (self.queue / ".end").exists() or Queue(str(self.queue), AHEAD).prefetcher_alive():
            assert time.monotonic() < deadline, "the prefetcher did not stop"
            time.sleep(0.05)

    def wait_queued(self, n: int, timeout: float = 60) -> Path:
        deadline = time.monotonic() + timeout
        while True:
            hits = [e for e in self.queued() if e.startswith(seg(n) + "-")]
            if hits:
                return self.queue / hits[0]
            assert time.monotonic() < deadline, f"{seg(n)} was never queued"
            time.sleep(0.02)


def wait_dead(pid: int, timeout: float = 60) -> None:
    """Until every thread of `pid` has exited (its open files, and so its flock, are released then).
    A detached prefetcher is nobody's child here: it may stay a zombie leader for a while, which
    holds no files; its other threads vanish from /proc/PID/task once they are done."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        if threads == [str(pid)] and state in {"Z", "X"}:
            return
        assert time.monotonic() < deadline, f"process {pid} outlived its SIGKILL"
        time.sleep(0.01)


@pytest.fixture
def make_archive(tmp_path: Path) -> Iterator:
    made: list[Archive] = []

    def make(numbers: list[int]) -> Archive:
        a = Archive(tmp_path / f"a{len(made)}", numbers)
        made.append(a)
        return a

    yield make
    for a in made:  # stop what the calls started, even on failure
        for pid in a.prefetchers():
            os.kill(pid, signal.SIGKILL)


def test_calls_take_their_segments_from_a_bounded_queue_and_the_end_is_still_not_found(make_archive) -> None:
    a = make_archive(list(range(1, 10)))
    largest = 0
    for n in range(1, 10):
        rc, err, data = a.fetch(n)
        assert (rc, err) == (0, ""), err
        assert data == a.data[n]
        entries = os.listdir(a.queue)
        # Segments in the queue, complete or being fetched; one just completed may still have its
        # in-flight marker for an instant, and counts once.
        busy = {e[:24] for e in entries if e.endswith(SUFFIX) and not e.startswith(".")} | \
            {e[1:25] for e in entries if e.endswith(".inflight")}
        largest = max(largest, len(busy))
        assert not [e for e in entries if is_wal_name(e)]  # nothing in it PostgreSQL could take for WAL
    assert largest <= AHEAD
    rc, err, data = a.fetch(10)  # past the end of the archive
    assert (rc, err, data) == (1, "", None)
    a.wait_idle()
    assert [q[:24] for q in a.queued()] == [seg(9)]  # only the segment last taken is kept


def test_the_segment_last_taken_is_served_again_from_the_queue(make_archive) -> None:
    # At the end of recovery PostgreSQL asks once more for the last segment it replayed.
    a = make_archive([1, 2, 3])
    for n in (1, 2, 3):
        assert a.fetch(n)[2] == a.data[n]
    a.wait_idle()
    kept = a.wait_queued(3)
    assert [q[:24] for q in a.queued()] == [seg(3)]  # older ones were dropped as replay moved on
    (a.base / "spool").rename(a.base / "spool-away")  # the archive is out of reach: only the queue can answer
    try:
        rc, err, data = a.fetch(3)
    finally:
        (a.base / "spool-away").rename(a.base / "spool")
    assert (rc, err, data) == (0, "", a.data[3])
    raw = bytearray(kept.read_bytes())  # and the kept copy is checked like any queued one
    raw[100] ^= 0x01
    kept.write_bytes(bytes(raw))
    rc, err, data = a.fetch(3)
    assert rc == 0 and data == a.data[3] and "fails its checksum" in err


def test_a_flipped_byte_in_a_queued_segment_is_refused_and_the_segment_refetched(make_archive) -> None:
    a = make_archive([1, 2, 3])
    assert a.fetch(1)[0] == 0
    queued = a.wait_queued(2)
    a.wait_idle()
    raw = bytearray(queued.read_bytes())
    raw[5000] ^= 0x01
    queued.write_bytes(bytes(raw))
    rc, err, data = a.fetch(2)
    assert rc == 0 and data == a.data[2]
    assert "fails its checksum" in err and seg(2) in err
    assert not queued.exists()
    assert a.fetch(3)[2] == a.data[3]


def test_a_killed_prefetcher_leaves_nothing_postgresql_could_mistake(make_archive) -> None:
    a = make_archive(list(range(1, 9)))
    assert a.fetch(1)[0] == 0
    deadline = time.monotonic() + 60
    while not a.prefetchers():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    killed = a.prefetchers()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    for pid in killed:  # kill() only sends the signal: the lock goes when the last thread has exited
        wait_dead(pid)
    for e in os.listdir(a.queue):  # hidden temp files, markers, or complete files checked on take
        assert not is_wal_name(e)
        assert e.startswith(".") or e.endswith(SUFFIX)
    assert not Queue(str(a.queue), AHEAD).prefetcher_alive()  # the kernel dropped its lock
    for n in range(2, 9):
        rc, err, data = a.fetch(n)
        assert rc == 0 and data == a.data[n], err
    a.wait_idle()
    kept = [e for e in os.listdir(a.queue) if e.endswith(SUFFIX)]  # the segment last taken, at most
    assert [e[:24] for e in kept] in ([seg(8)], [])
    assert sorted(set(os.listdir(a.queue)) - set(kept)) in ([".end", LOCK], [LOCK])


def test_a_gap_ends_prefetching_and_only_the_absent_segment_is_not_found(make_archive) -> None:
    a = make_archive([1, 2, 4, 5])
    assert a.fetch(1)[0] == 0
    a.wait_idle()
    assert [q[:24] for q in a.queued()] == [seg(2)]
    assert a.fetch(2)[2] == a.data[2]
    assert a.fetch(3)[:2] == (1, "")
    assert a.fetch(4)[2] == a.data[4]  # a restore_command asked past a gap still answers


def test_removing_the_recovery_directory_stops_the_prefetcher_and_leaves_nothing(make_archive) -> None:
    a = make_archive(list(range(1, 30)))
    assert a.fetch(1)[0] == 0
    a.wait_queued(2)
    remove_recovery_dir(a.queue.parent)
    assert not a.queue.parent.exists()
    deadline = time.monotonic() + 30
    while a.prefetchers():
        assert time.monotonic() < deadline, "the prefetcher outlived its queue"
        time.sleep(0.05)
    assert not a.queue.parent.exists()
    assert [p.name for p in a.base.iterdir() if "pgkeeper-recovery" in p.name] == []


def test_prefetching_started_before_the_server_queues_its_first_segment(make_archive) -> None:
    # What pitr does just before it starts the server (tasks/recovery.start_prefetching).
    a = make_archive(list(range(4, 9)))
    r = run_cli("wal-fetch", "--config", str(a.config), "--prefetch-after", seg(3), str(SIZE))
    assert (r.returncode, r.stderr) == (0, "")
    a.wait_queued(4)
    for n in range(4, 9):
        rc, err, data = a.fetch(n)
        assert (rc, err, data) == (0, "", a.data[n])
    bad = run_cli("wal-fetch", "--config", str(a.config), "--prefetch-after", "nonsense", str(SIZE))
    assert bad.returncode == 255 and bad.stderr.count("\n") == 1
    a.wait_idle()
    remove_recovery_dir(a.queue.parent)
    assert not a.queue.parent.exists()


def test_the_shell_take_serves_queued_segments_without_starting_python(make_archive) -> None:
    a = make_archive(list(range(1, 10)))
    rc, err, data = a.restore_command(1)  # nothing queued yet: wal-fetch fetches it and starts the prefetcher
    assert (rc, err, data) == (0, "", a.data[1]) and a.python_calls() == [seg(1)]
    largest = 0
    for n in range(2, 10):
        a.wait_queued(n)  # the prefetcher keeps ahead of replay from the shell takes' markers alone
        entries = os.listdir(a.queue)
        largest = max(largest, len({e[:24] for e in entries if e.endswith(SUFFIX) and not e.startswith(".")} |
                                   {e[1:25] for e in entries if e.endswith(".inflight")}))
        rc, err, data = a.restore_command(n)
        assert (rc, err, data) == (0, "", a.data[n])
    assert a.python_calls() == [seg(1)]  # segments 2-9 never started Python
    assert largest <= AHEAD
    assert os.stat(a.datadir / "pg_wal" / "RECOVERYXLOG").st_nlink == 2  # linked: the queue keeps the last one
    assert a.restore_command(10)[:3] == (1, "", None)  # past the end: only wal-fetch says "not found"
    assert a.python_calls() == [seg(1), seg(10)]
    # Under recovery the prefetcher stays (it drops what replay is past) and empties the queue and
    # stops when the server removes recovery.signal at the end of recovery.
    deadline = time.monotonic() + 60
    while [q[:24] for q in a.queued()] != [seg(9)] or any(e.startswith(".taken-") for e in os.listdir(a.queue)):
        assert time.monotonic() < deadline, os.listdir(a.queue)
        time.sleep(0.02)
    assert a.prefetchers()
    (a.datadir / "recovery.signal").unlink()
    while a.prefetchers() or a.queued():
        assert time.monotonic() < deadline, "the prefetcher outlived the recovery"
        time.sleep(0.05)


def test_a_flipped_byte_is_refused_by_the_shell_take_and_the_segment_refetched(make_archive) -> None:
    a = make_archive([1, 2, 3])
    assert a.restore_command(1)[0] == 0
    queued = a.wait_queued(2)
    raw = bytearray(queued.read_bytes())
    raw[5000] ^= 0x01
    queued.write_bytes(bytes(raw))
    rc, err, data = a.restore_command(2)
    assert rc == 0 and data == a.data[2]
    assert "fails its checksum" in err and seg(2) in err  # wal-fetch ran, found it bad, refetched it
    assert a.python_calls() == [seg(1), seg(2)]
    a.wait_queued(3)
    assert a.restore_command(3)[:3] == (0, "", a.data[3]) and len(a.python_calls()) == 2


def test_a_shell_take_that_fails_half_way_falls_through_to_wal_fetch(make_archive) -> None:
    # A failing redirection must not end the shell (dash exits 2 on one with a special builtin:
    # PostgreSQL would read "not found" and end recovery early): here the marker cannot be written.
    a = make_archive([1, 2, 3])
    assert a.restore_command(1)[0] == 0
    a.wait_queued(2)
    (a.queue / f".taken-{seg(2)}").mkdir()
    rc, err, data = a.restore_command(2)
    assert (rc, err, data) == (0, "", a.data[2]) and a.python_calls() == [seg(1), seg(2)]
    (a.queue / f".taken-{seg(2)}").rmdir()
    remove_recovery_dir(a.queue.parent)  # the queue gone: wal-fetch answers from the archive
    rc, _, data = a.restore_command(3)  # (with a warning that it cannot fetch ahead any more)
    assert (rc, data) == (0, a.data[3])
    assert a.restore_command(4)[0] == 1

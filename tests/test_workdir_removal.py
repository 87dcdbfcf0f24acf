"""A restore's work directory removed by a process SIGKILLed halfway still names that process
(its tag is removed last), so the next restore's clear_dead_dirs removes the rest; an untagged
leftover would stay forever (found by test_restore_kill: a command killed during its cleanup)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from pgkeeper.liveness import OWNER_FILE, claim_dir, clear_dead_dirs, remove_claimed_dir

PREFIX = "pgkeeper-restore-"


def _killed_while_removing(path: Path, delay: float) -> None:
    """A real child claims `path` and removes it; SIGKILLed `delay` s after it starts removing."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a restore's cleanup does
        try:
            os.close(ready_r)
            claim_dir(path)
            os.write(ready_w, b"x")
            remove_claimed_dir(path)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    if delay:
        time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_a_removal_killed_at_any_instant_leaves_nothing_the_next_clear_misses(tmp_path: Path) -> None:
    rng = random.Random(7)
    for trial in range(8):
        path = tmp_path / f"{PREFIX}{trial}"
        (path / "sub").mkdir(parents=True)
        for i in range(400):
            (path / f"f{i}").write_bytes(b"x")
        (path / "sub" / "dump").write_bytes(os.urandom(1 << 16))
        _killed_while_removing(path, rng.uniform(0, 0.01))
        assert not path.exists() or (path / OWNER_FILE).exists(), f"trial {trial}: untagged leftover"
        clear_dead_dirs(tmp_path, PREFIX)
        assert not path.exists(), f"trial {trial}: the dead remover's directory is still there"


def test_an_untagged_directory_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / f"{PREFIX}other"
    path.mkdir()
    (path / "file").write_bytes(b"x")
    assert clear_dead_dirs(tmp_path, PREFIX) == [] and path.exists()

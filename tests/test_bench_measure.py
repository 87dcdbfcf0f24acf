"""The benchmarks' process measure (benchmarks/measure.py) reports a command's own peak RSS and
CPU, never the memory of the benchmark process that started it.

The 10-row backup's memory row read 120-122 MB only after the benchmark had saved blocks: the
kernel counts a process's peak RSS from the copy of its parent it was before its exec, and the
benchmark had imported Prefect and prefect-aws to save them. The launcher keeps that out."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

MB = 2**20
# Touches `mb` MB and stays alive long enough to be measured.
ALLOCATE = "import sys; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096])"


def load_measure():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("bench_measure", ROOT / "benchmarks" / "measure.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_a_command_started_by_a_large_process_reports_its_own_peak() -> None:
    measure = load_measure()
    ballast = bytearray(300 * MB)  # the benchmark after it imported Prefect, exaggerated
    ballast[::4096] = b"x" * len(ballast[::4096])

    # What a plain spawn reports: the parent's memory (the trap the launcher avoids).
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", "pass"])
    _pid, _status, usage = os.wait4(proc.pid, 0)
    assert usage.ru_maxrss * 1024 >= 300 * MB

    cpu: list[float] = []
    _wall, small = measure.process([sys.executable, "-I", "-S", "-c", "pass"], {}, cpu=cpu)
    assert small < 60, small  # MB: an empty interpreter, not the 300 MB that started it
    assert len(cpu) == 1 and cpu[0] >= 0
    _wall, large = measure.process([sys.executable, "-I", "-S", "-c", ALLOCATE, "200"], {})
    assert 200 <= large < 260, large
    del ballast


def test_a_failing_command_ends_the_benchmark_with_its_error(tmp_path: Path) -> None:
    measure = load_measure()
    try:
        measure.process([sys.executable, "-c", "import sys; sys.exit('no such backup')"], {})
    except SystemExit as exc:
        assert "failed (1)" in str(exc) and "no such backup" in str(exc)
    else:
        raise AssertionError("a failed command was measured as if it had worked")
    try:
        measure.process([str(tmp_path / "missing")], {})
    except SystemExit as exc:
        assert "failed (127)" in str(exc)
    else:
        raise AssertionError("a missing program was measured as if it had run")

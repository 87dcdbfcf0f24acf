"""How a benchmark measures one process: wall time, CPU (user + sys, its children included) and
peak RSS, as `/usr/bin/time` reports them.

The kernel counts a process's peak RSS from the memory it had before its exec, that is a copy of
whoever started it: a command started by a benchmark process that had imported Prefect and
prefect-aws (to save blocks) reported that process's ~120 MB, whatever the command used. So
commands start from a small launcher (`python -I -S`, ~10 MB) that forks them and reports what
`wait4` says about them alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

LAUNCHER = """
import os, sys, time
report, argv = int(sys.argv[1]), sys.argv[2:]
started = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.close(report)
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic() - started
os.write(report, f"{wall} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}".encode())
os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def process(argv: list[str], env: dict[str, str], stdout=subprocess.DEVNULL, cpu: list | None = None,
            log: list | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process; its CPU seconds (user + sys, children
    included) go to `cpu`: on a shared machine they move less; what it wrote to stderr goes to
    `log`. A failed command ends the benchmark with its last stderr lines."""
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as err_file:  # a file, not a pipe: a chatty child never blocks
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, str(write_end), *argv],
                                    env={**os.environ, **env}, stdout=stdout, stderr=err_file, pass_fds=[write_end])
        finally:
            os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            measured = report.read().decode().split()
        proc.wait()
        err_file.seek(0)
        err = err_file.read().decode(errors="replace")
    if proc.returncode != 0 or len(measured) != 3:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err[-2000:]}")
    wall, cpu_s, peak_kb = float(measured[0]), float(measured[1]), int(measured[2])
    if cpu is not None:
        cpu.append(cpu_s)
    if log is not None:
        log.append(err)
    return wall, peak_kb / 1024


def peak_rss_kb() -> int:
    """This process's peak RSS since its exec (VmHWM); getrusage's ru_maxrss would also count the
    copy of its parent it was before the exec."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def compile_package(root: str | os.PathLike[str]) -> None:
    """Bytecode for pgkeeper's own modules, as an installed package has it (pip compiles at install).

    This checkout is an editable install, so Python writes a module's bytecode only on its first
    import, and not at all under PYTHONDONTWRITEBYTECODE (set on the machines these benchmarks run
    on): every `pgkeeper` process then compiled the ~80 modules of a backup from source again,
    about 0.25 s of CPU a command. Stale files are rewritten, current ones left alone."""
    import compileall

    compileall.compile_dir(os.path.join(root, "pgkeeper"), quiet=1)

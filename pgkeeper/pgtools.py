"""Finding and running PostgreSQL's own client tools safely.

Tools get connection settings (and the password) through the environment, never argv.
A tool that hangs is killed by us: a Prefect task timeout does not stop a blocking child.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pgkeeper.errors import NotFound, ToolFailed

SERVER_USER = "postgres"  # the OS user PostgreSQL runs as when we are root (it refuses to run as root)
_CANDIDATE_BINDIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
                      "/usr/lib/postgresql/17/bin", "/usr/pgsql-15/bin")


def bindir() -> Path:
    """The directory holding pg_dump, pg_restore, initdb, ... (PG_BINDIR overrides)."""
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override)
    for cand in _CANDIDATE_BINDIRS:
        if Path(cand, "pg_dump").exists():
            return Path(cand)
    found = shutil.which("pg_dump")
    if found:
        return Path(found).parent
    raise NotFound("PostgreSQL client tools not found: install postgresql-15 or set PG_BINDIR")


def tool(name: str) -> str:
    path = bindir() / name
    if not path.exists():
        raise NotFound(f"{name} not found in {path.parent}: set PG_BINDIR")
    return str(path)


def as_server_user(user: str = SERVER_USER) -> list[str]:
    """Prefix for a command that must run as the server's OS user: `runuser -u USER --` when we
    are root (as the tests and the demo are), nothing otherwise (the server runs as us)."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 and user else []


def give_to_server_user(path: Path) -> None:
    """Hand `path` to the server's OS user when we are root (a server started by runuser writes it)."""
    if os.geteuid() == 0:
        pw = pwd.getpwnam(SERVER_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def make_server_dir(path: Path) -> Path:
    """A directory the server user can own (a data directory), with every parent traversable by it."""
    path.mkdir(parents=True, exist_ok=True)
    give_to_server_user(path)
    path.chmod(0o700)
    return path


def last_line(text: str | bytes) -> str:
    """The most telling line of a tool's stderr, for a one-line error."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln or "FATAL" in ln or "fatal:" in ln:
            return ln
    return lines[-1] if lines else "no output"


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: be killed when the process that started us dies, however it
    dies (SIGKILL included), as a new session would otherwise outlive it and go on writing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the group kill on exit still applies
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class Child:
    """A child process that is killed (with its group) on timeout, error or exit."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 timeout: float | None = None, **popen: object) -> None:
        full_env = {**os.environ, **(env or {})}
        self.argv = list(argv)
        self.name = Path(argv[0]).name
        parent = os.getpid()
        self.proc = subprocess.Popen(argv, env=full_env, start_new_session=True,  # type: ignore[arg-type]
                                     preexec_fn=lambda: _die_with_parent(parent), **popen)
        self.timed_out = False
        self._timer: threading.Timer | None = None
        if timeout:
            self._timer = threading.Timer(timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        rc = self.proc.wait()
        if self._timer:
            self._timer.cancel()
        return rc

    def check(self, stderr: bytes | str = b"", timeout: float | None = None) -> None:
        """Raise one clear line if the child failed or was killed."""
        rc = self.wait()
        if self.timed_out:
            raise ToolFailed(f"{self.name} did not finish within {timeout or '?'} s and was stopped")
        if rc < 0:
            raise ToolFailed(f"{self.name} was killed by signal {-rc}")
        if rc != 0:
            raise ToolFailed(f"{self.name} failed: {last_line(stderr)}")


@contextmanager
def child(argv: Sequence[str], **kw: object) -> Iterator[Child]:
    """Run a child for the duration of a block; it never outlives the block."""
    c = Child(argv, **kw)  # type: ignore[arg-type]
    try:
        yield c
    finally:
        c.kill()
        c.wait()
        for stream in (c.proc.stdin, c.proc.stdout, c.proc.stderr):
            if stream:
                stream.close()


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
        input: bytes | None = None) -> str:
    """Run a tool to completion; return stdout, raise ToolFailed with one line on failure."""
    with child(argv, env=env, timeout=timeout, stdin=subprocess.PIPE if input else subprocess.DEVNULL,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE) as c:
        out, err = c.proc.communicate(input=input)
        c.check(err, timeout)
        return out.decode("utf-8", "replace")

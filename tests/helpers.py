"""Small helpers tests share: what a user would compare after a backup or restore."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from pgkeeper.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent


def user_tables(conninfo: str) -> list[tuple[str, str]]:
    with psycopg.connect(conninfo) as c:
        return c.execute(
            "SELECT schemaname, tablename FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()


def table_fingerprints(conninfo: str) -> dict[str, tuple[int, str]]:
    """Per table: (row count, md5 of all rows in a stable order). Equal means equal data."""
    out = {}
    with psycopg.connect(conninfo) as c:
        for schema, table in user_tables(conninfo):
            ident = sql.Identifier(schema, table)
            q = sql.SQL("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
                        "FROM {} t").format(ident)
            n, digest = c.execute(q).fetchone()
            out[f"{schema}.{table}"] = (n, digest)
    return out


def create_database(cluster: LocalCluster, name: str) -> str:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return cluster.conninfo(name)


def drop_database(cluster: LocalCluster, name: str) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_exists(cluster: LocalCluster, name: str) -> bool:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        return bool(c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone())


def shadows_of(cluster: LocalCluster, target: str) -> list[str]:
    """The shadow databases a restore of `target` made (`<target>_restoring_<id>`)."""
    with psycopg.connect(cluster.conninfo()) as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                        (target + "\\_restoring\\_%",)).fetchall()]


@contextmanager
def backed_up_copy(cluster: LocalCluster, template: str, repo_dir: Path, prefix: str,
                   *statements: str) -> Iterator[dict[str, str]]:
    """A database copied from `template` (then `statements` run in it), backed up once by
    `pgkeeper backup` into `repo_dir`: the old scripts' variables pointing at both; dropped after."""
    name = prefix + uuid.uuid4().hex[:8]
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    try:
        if statements:
            with psycopg.connect(cluster.conninfo(name), autocommit=True) as c:
                for statement in statements:
                    c.execute(statement)
        env = {"POSTGRES_HOST": cluster.host, "POSTGRES_PORT": str(cluster.port), "POSTGRES_USER": "postgres",
               "POSTGRES_PASSWORD": cluster.password, "POSTGRES_DB": name, "BACKUP_DIR": str(repo_dir)}
        made = run_cli_here("backup", env=env)
        assert made.returncode == 0, made.stderr[-3000:]
        yield env
    finally:
        drop_database(cluster, name)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `pgkeeper ...` in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pgkeeper.cli.main", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# Loggers of the servers tests run inside their own process (moto's werkzeug, aiosmtpd's
# mail.log): a command run in a process of its own never logs their records.
TEST_SERVER_LOGGERS = frozenset({"werkzeug", "moto", "mail", "aiosmtpd"})


class _Route(logging.Filter):
    def __init__(self, command: bool) -> None:
        super().__init__()
        self.command = command

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.name.split(".")[0] not in TEST_SERVER_LOGGERS) == self.command


def run_cli_here(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    """Run `pgkeeper ...` in this process, for tests whose subject is what a command does, not
    the process it runs in (exit codes by signal, argv, imports, teardown): the same `main`, the
    same environment, its exit code, and what it writes to stdout and stderr, Prefect's log
    lines included. It saves a fresh process's ~3-4 s of imports per call.

    Prefect's settings are this process's (the session's API): an `env` that changes a PREFECT_
    variable needs a fresh process, `run_cli`.
    """
    import contextlib
    import io

    from prefect import tags

    from pgkeeper.cli.main import main
    from pgkeeper.runinfo import RUN_TAG, tag_every_run

    # As a command's first import of pgkeeper.flows does; here that import may come inside the
    # tags() below, whose exit would take the tag away from this session's later in-process runs.
    tag_every_run()

    changed = sorted(k for k, v in (env or {}).items() if k.startswith("PREFECT_") and os.environ.get(k) != v)
    if changed:
        raise AssertionError(f"run_cli_here cannot change Prefect's settings ({', '.join(changed)}): use run_cli")
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    # Log handlers keep the stream they were configured with (Prefect's console: sys.stderr then,
    # which may be pytest's capture). Beside each console handler, a twin writes the command's
    # records to its stderr; the servers the test runs in this process keep theirs.
    consoles = [(logger, h) for logger in [logging.root, *list(logging.root.manager.loggerDict.values())]
                for h in getattr(logger, "handlers", [])
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                and not type(h).__module__.startswith("_pytest")]
    twins, to_test = [], _Route(command=False)
    os.environ.update(env or {})
    os.chdir(ROOT)
    try:
        for logger, handler in consoles:
            twin = (type(handler)(stream=err, level=handler.level) if hasattr(handler, "console")
                    else logging.StreamHandler(err))
            twin.setLevel(handler.level)
            twin.setFormatter(handler.formatter)
            for f in [*handler.filters, _Route(command=True)]:
                twin.addFilter(f)
            handler.addFilter(to_test)
            logger.addHandler(twin)
            twins.append((logger, handler, twin))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), tags(RUN_TAG):
            saved_stdin, sys.stdin = sys.stdin, io.StringIO(stdin)
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
            finally:
                sys.stdin = saved_stdin
    finally:
        for logger, handler, twin in twins:
            logger.removeHandler(twin)
            handler.removeFilter(to_test)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["pgkeeper", *args], code, out.getvalue(), err.getvalue())


FAKE_SYSID = 7300000000000000001


def wal_page_header(name: str, segment_size: int = 16 << 20, sysid: int = FAKE_SYSID) -> bytes:
    """The 40-byte long page header PostgreSQL 15 starts every WAL segment with (for fake segments)."""
    per_log = 0x100000000 // segment_size
    tli, segno = int(name[:8], 16), int(name[8:16], 16) * per_log + int(name[16:24], 16)
    return (0xD110.to_bytes(2, "little") + (2).to_bytes(2, "little") + tli.to_bytes(4, "little")
            + (segno * segment_size).to_bytes(8, "little") + bytes(8) + sysid.to_bytes(8, "little")
            + segment_size.to_bytes(4, "little") + (8192).to_bytes(4, "little"))


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int | None) -> bool:
    """Whether `pid` runs (a zombie does not count)."""
    if pid is None:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def pids_with_arg(arg: bytes, tool: bytes = b"pg_restore", environ: bytes | None = None) -> list[int]:
    """Processes of `tool` with `arg` in their command line and, given `environ` (e.g.
    b"PGDATABASE=x"), that entry in their environment: only this test's, when the other xdist
    workers run the same tools for tests of their own."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
            if tool not in cmdline or arg not in cmdline:
                continue
            if environ is not None and environ not in Path("/proc", entry, "environ").read_bytes().split(b"\0"):
                continue
        except OSError:  # gone meanwhile
            continue
        found.append(int(entry))
    return found


def pids_running(tool: bytes, *args: bytes) -> list[int]:
    """Processes whose program is `tool` (the end of argv[0]) with any of `args` as a whole
    argument: unlike pids_with_arg, no other program that mentions them matches."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile
                continue
            if argv and argv[0].endswith(tool) and set(args) & set(argv):
                found.append(int(entry))
    return found


def waited_safety_backup(stdout: str, timeout: float = 180) -> str:
    """After `pgkeeper restore` in replace mode: wait for the safety backup it left running as a
    process of its own (no test leaves it behind); the name of the copy it backed up."""
    import re

    found = re.search(r"safety backup of the replaced database \((\S+), kept until it is listed\): "
                      r"running on as process (\d+)", stdout)
    assert found, stdout
    wait_for(lambda: not alive(int(found[2])), timeout, "the safety backup's process")
    return found[1]


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def api_request(api: str, method: str, path: str, body: dict | None = None, credential: str | None = None):  # noqa: ANN201
    """A Prefect API call over plain HTTP (no Prefect client in the test process: it would stay
    pointed at a server after it is gone), with a locked server's credential when given."""
    import base64

    import httpx

    headers = {"Authorization": "Basic " + base64.b64encode(credential.encode()).decode()} if credential else {}
    # The server answers 503 while its database is busy; Prefect's own client retries those.
    for attempt in range(6):
        response = httpx.request(method, f"{api}{path}", json=body, timeout=30, headers=headers)
        if response.status_code not in (429, 503):
            break
        time.sleep(0.5 * 2**attempt)
    response.raise_for_status()
    return response.json() if response.content else None

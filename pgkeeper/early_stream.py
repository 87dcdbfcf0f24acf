"""What the early starts of `pgkeeper backup`, `pgkeeper base-backup` and `pgkeeper restore` share
(pgkeeper/early.py, early_base.py, early_restore.py): when a command may start before Prefect is
imported, and the stream that runs in a forked child until the run adopts it.

The child has its own interpreter lock, so it streams at full speed while the command imports
Prefect; it dies with the command (PR_SET_PDEATHSIG, a SIGKILL included), and reports through
a pipe, one JSON object per line: progress, then its result or its error in one line. Nothing
here imports Prefect.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from pgkeeper.connection import PlainConnection, connection_from_env
from pgkeeper.early_api import Api, ApiError, Beside
from pgkeeper.errors import PgkeeperError
from pgkeeper.names import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK

if TYPE_CHECKING:
    import argparse

    from pgkeeper.repository import PlainRepository, RepositoryVerbs

CONNECTION_SLUG = "pgkeeper-postgres-connection"
REPOSITORY_SLUG = "pgkeeper-backup-repository"

Send = Callable[[dict[str, Any]], None]
Early = TypeVar("Early", bound="ForkedStream")

# This process's early start, until its run adopts it or the command ends (one command a process).
_pending: ForkedStream | None = None


@contextmanager
def started_early(start: Callable[[], ForkedStream | None]) -> Iterator[None]:
    """Around a command's run: its early start begun (only in a fresh process, before anything
    imported Prefect) and pending for the run to adopt; at the end, one no run adopted is undone
    and an adopted one cleaned up (ForkedStream.finish)."""
    global _pending
    early = start() if "prefect" not in sys.modules else None
    _pending = early
    try:
        yield
    finally:
        if _pending is early:
            _pending = None
        if early is not None:
            early.finish()


def peek_pending(kind: type[Early]) -> Early | None:
    """This process's early start of that kind, left pending (for what the run decides before it
    adopts one: the command line's plan, the run's check of it)."""
    return _pending if isinstance(_pending, kind) else None


def take_pending(kind: type[Early]) -> Early | None:
    """For the run: this process's early start of that kind, which is then no longer pending. One
    of another kind stays pending (a restore's safety backup runs the backup flow inside the
    restore's run) and is undone at the command's end if its own run did not take it."""
    global _pending
    if not isinstance(_pending, kind):
        return None
    early, _pending = _pending, None
    return early


def early_choices(args: argparse.Namespace, api_url: str) -> tuple[Api, PlainConnection, PlainRepository] | None:
    """The API, connection and repository a run of this command is sure to choose, when they can
    be known without Prefect; None (today's path) whenever the run could choose otherwise: a block
    named on the command line or saved under the default names, no BACKUP_DIR or --backup-dir, an
    API not configured through the environment, no manifest key in the key directory,
    PGKEEPER_EARLY_START=0. Trouble asking also means None: the run meets it and says so."""
    found = _early_settings(args, api_url, with_connection=True)
    if found is None:
        return None
    api, conn, repo = found
    assert conn is not None
    return api, conn, repo


def early_repository(args: argparse.Namespace, api_url: str) -> PlainRepository | None:
    """For a command that connects to no database (pitr): the repository its run is sure to
    choose, on early_choices' conditions without those of the connection."""
    found = _early_settings(args, api_url, with_connection=False)
    return None if found is None else found[2]


def _early_settings(args: argparse.Namespace, api_url: str,
                    with_connection: bool) -> tuple[Api, PlainConnection | None, PlainRepository] | None:
    from pgkeeper.settings import early_start_enabled

    if not early_start_enabled() or os.environ.get("PREFECT_API_URL") != api_url:
        return None  # an API from a Prefect profile may carry credentials only Prefect reads
    if getattr(args, "connection_block", None) or args.repository_block \
            or not (args.backup_dir or os.environ.get("BACKUP_DIR")):
        return None
    from pgkeeper import keys
    from pgkeeper.repository import repository_from_env

    api = Api(api_url)
    try:
        conn = None
        if with_connection:
            conn = connection_from_env(database=args.database, host=args.host, port=args.port, user=args.user)
        repo = repository_from_env(path=args.backup_dir)
        if not keys.mac_keys():  # without a manifest key in the key directory the run looks for Secret blocks
            return None
        repository_block = Beside(lambda: api.block_exists(REPOSITORY_SLUG, DEFAULT_REPOSITORY_BLOCK))
        connection_block = with_connection and api.block_exists(CONNECTION_SLUG, DEFAULT_CONNECTION_BLOCK)  # at once
        if repository_block.result() or connection_block:
            return None  # the run takes its settings from those blocks
    except (ApiError, PgkeeperError, OSError, ValueError):
        return None
    return api, conn, repo


class ForkedStream:
    """A backup's stream begun by the command in a forked child, for its run to adopt."""

    what = "stream"  # the tool, in the one-line error of a stream that ended without a result

    def __init__(self, conn: PlainConnection, repo: PlainRepository, backup_id: str,
                 waiting: WaitingChild | None = None) -> None:
        self.conn, self.repo, self.backup_id = conn, repo, backup_id
        self.pid: int | None = None
        self.pipe: Any = None
        self.adopted = False
        self._stream_taken = False
        self.waiting = waiting  # a child forked before the checks, told the id by fork_stream

    def stream(self, send: Send) -> dict[str, Any]:
        """In the child: the stream itself; its result as JSON."""
        raise NotImplementedError

    # -- in the run -----------------------------------------------------------------------

    def take_stream(self, backup_id: str) -> bool:
        """True once, for the step that streams this backup; a retry then streams anew."""
        if self._stream_taken or backup_id != self.backup_id:
            return False
        self._stream_taken = True
        return True

    def message_with(self, key: str, on_message: Callable[[dict[str, Any]], None] = lambda _: None) -> dict[str, Any]:
        """Read the child's messages up to the first that holds `key` and return it (the child goes
        on unless that was its result); the others go to `on_message`. A child that ends or fails
        first is stopped and its error raised (one line, its kind kept)."""
        last: dict[str, Any] = {}
        try:
            for line in self.pipe:
                last = json.loads(line)
                if key in last:
                    return last
                if "result" in last or "error" in last:
                    break
                on_message(last)
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise _error_of(last if "error" in last else {}, self.what)

    def outcome(self, on_message: Callable[[dict[str, Any]], None] = lambda _: None) -> dict[str, Any]:
        """Wait for the child: its progress messages go to `on_message`; its result is returned,
        its error raised (one line, its kind kept)."""
        try:
            return self.message_with("result", on_message)["result"]
        finally:
            self.stop()

    # -- in the command -------------------------------------------------------------------

    def fork_stream(self) -> None:
        """The stream started in a child process that dies with this one (or, when a child was
        forked before the checks, that child told to stream into this backup id)."""
        if self.waiting is not None:
            self.pid, self.pipe = self.waiting.go(self.backup_id)
            return
        self.pid, self.pipe = _fork_child(self.stream)

    def stop(self) -> None:
        """The child stopped and reaped (its tool dies with it)."""
        if self.pid is None:
            return
        _kill_and_reap(self.pid)
        self.pid = None
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None

    def give_up(self) -> None:
        """Undo a start no run adopted: the stream stopped, its folder removed."""
        self.stop()
        self.repo.storage().abandon_backup(self.backup_id)

    def finish(self) -> None:
        """At the command's end: a start no run adopted is undone; an adopted one has no child
        left, and its folder is removed unless its manifest was written (a run that failed
        before its stream step left the folder to its claimer: no manifest, no backup)."""
        if not self.adopted:
            self.give_up()
            return
        self.stop()
        storage = self.repo.storage()
        if self.backup_id not in storage.list_backup_ids():
            storage.abandon_backup(self.backup_id)


class WaitingChild:
    """A stream's child forked before the command's checks and claim, so that what may start
    before them (`prepare`: e.g. a tool that writes only to its own pipe) starts at once, on the
    other core, while this process makes the checks. It then waits: `go(backup_id)` has it run
    `stream(backup_id, prepared, send)` into the claimed folder (ForkedStream.fork_stream does
    that); `stop()` (checks that refuse, or anything else) kills it before it wrote a byte.
    It dies with this process, as a ForkedStream's child does."""

    def __init__(self, prepare: Callable[[], Any], stream: Callable[[str, Any, Send], dict[str, Any]]) -> None:
        go_read, go_write = os.pipe()
        pid, self._results = _fork_child(lambda send: _when_told(go_read, prepare, stream, send),
                                         child_closes=go_write)
        os.close(go_read)
        self.pid: int | None = pid
        self._go: int | None = go_write

    def go(self, backup_id: str) -> tuple[int, Any]:
        """Tell the child its backup id; (its pid, the pipe its messages come through)."""
        assert self.pid is not None and self._go is not None
        try:
            os.write(self._go, (backup_id + "\n").encode())
        except BrokenPipeError:
            pass  # it failed to prepare: its error is already in the pipe
        os.close(self._go)
        self._go = None
        return self.pid, self._results

    def stop(self) -> None:
        """Not told to go: the child killed and reaped (what it started dies with it)."""
        if self._go is not None:
            os.close(self._go)
            self._go = None
        if self.pid is not None:
            _kill_and_reap(self.pid)
            self.pid = None
        self._results.close()


def _kill_and_reap(pid: int) -> None:
    """A child of ours killed and waited for (gone already is fine)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _when_told(go_read: int, prepare: Callable[[], Any], stream: Callable[[str, Any, Send], dict[str, Any]],
               send: Send) -> dict[str, Any]:
    prepared = prepare()
    with os.fdopen(go_read, "r") as told:
        backup_id = told.readline().strip()
    if not backup_id:  # the command closed the pipe without an id: nothing to stream
        os._exit(0)
    return stream(backup_id, prepared, send)


def same_choice(early: ForkedStream, conn: Any, repo: RepositoryVerbs) -> bool:
    """Whether the run chose what the early start chose: the same server, database, role,
    password and TLS settings, and the same repository, compression and encryption."""
    def of(r: Any) -> tuple[Any, ...]:
        return (str(r.path), r.compression, r.level(), r.encrypts(), list(r.encryption_recipients),
                r.dump_timeout_seconds)

    return conn.libpq_env() == early.conn.libpq_env() and of(repo) == of(early.repo)


def _fork_child(stream: Callable[[Send], dict[str, Any]], child_closes: int | None = None) -> tuple[int, Any]:
    """`stream` run in a child that dies with this process; (its pid, the pipe its messages come
    through). `child_closes`: a descriptor of this process's the child must not hold open."""
    parent = os.getpid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        if child_closes is not None:
            os.close(child_closes)
        _stream_child(parent, write_end, stream)
    os.close(write_end)
    return pid, os.fdopen(read_end, "r")


def _stream_child(parent: int, write_end: int, stream: Callable[[Send], dict[str, Any]]) -> None:
    code = 1
    try:
        from pgkeeper.pgtools import _die_with_parent

        _die_with_parent(parent)
        with os.fdopen(write_end, "w", buffering=1) as out:
            def send(message: dict[str, Any]) -> None:
                out.write(json.dumps(message) + "\n")

            try:
                send({"result": stream(send)})
                code = 0
            except BaseException as exc:  # reported to the run's stream step, never printed here
                from pgkeeper.fmt import first_line

                send({"error": type(exc).__name__, "message": first_line(exc),
                      "transient": getattr(exc, "transient", None)})
    finally:
        os._exit(code)  # no exit handlers, no buffers of the parent's flushed twice


def _error_of(outcome: dict[str, Any], what: str) -> Exception:
    """The child's error as the kind it was (one line); anything unexpected is transient, so the
    step's retry streams anew."""
    from pgkeeper import errors
    from pgkeeper.errors import ToolFailed

    if not outcome:
        return ToolFailed(f"the early {what} stream ended without a result")
    kind = getattr(errors, outcome.get("error", ""), None)
    if isinstance(kind, type) and issubclass(kind, PgkeeperError):
        try:
            return kind(outcome["message"], transient=outcome.get("transient"))
        except TypeError:  # a kind with a constructor of its own
            return kind(outcome["message"])
    return ToolFailed(f"the early {what} stream failed: {outcome.get('error')}: {outcome.get('message')}")

"""`pgkeeper backup`'s early start: the dump begins while Prefect is still being imported.

Importing Prefect and creating the run take about 3 s of a `pgkeeper backup`, all of it before
the first byte was dumped. When the run is sure to make the same choices as the command line
can make without Prefect, the command takes them first and starts the stream in a child
process, then imports Prefect and creates the run, whose steps adopt what was started:

- the database's backup slot (the same global concurrency limit, taken over the same REST
  endpoints `slots.py` uses, renewed here until the run's `backup_slot` holds the lease);
- preflight (the same checks, `serverinfo.server_facts`, made before the stream starts; its
  warnings are raised by the run's preflight step) and the backup id (claimed by this process,
  which also writes the manifest);
- the dump itself (`dumpstream.dump_in_snapshot` in a forked child that dies with this process;
  its progress and result come back through a pipe to the run's dump step).

It steps aside, and today's path runs, whenever the choice could differ: a connection or
repository block named on the command line or saved under the default names, no BACKUP_DIR or
--backup-dir, an API not configured through the environment, no manifest key in the key
directory, PGKEEPER_EARLY_START=0, or the slot taken by another backup (the run then waits for
it as before). Anything that fails before the stream starts also steps aside: the run meets the
same failure in its own step and reports it. A stream that fails is the run's dump step failing
(its retry dumps anew); a run that does not adopt it (its settings differ) stops it, removes
its folder and gives the slot back. Nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgkeeper.connection import PlainConnection, connection_from_env
from pgkeeper.early_api import Api, ApiError
from pgkeeper.errors import PgkeeperError
from pgkeeper.names import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK
from pgkeeper.slots import LEASE_SECONDS, database_limit_name

if TYPE_CHECKING:
    import argparse

    from pgkeeper.dumpstream import DumpResult
    from pgkeeper.repository import PlainRepository, RepositoryVerbs
    from pgkeeper.serverinfo import ServerInfo

CONNECTION_SLUG = "pgkeeper-postgres-connection"
REPOSITORY_SLUG = "pgkeeper-backup-repository"
RENEW_EVERY_S = LEASE_SECONDS / 3

# The early start of this process, until the run adopts it (or the command gives it up).
_pending: EarlyBackup | None = None


class EarlyBackup:
    """A backup begun before its run existed: slot lease, preflight answer, claimed id, stream."""

    def __init__(self, api: Api, conn: PlainConnection, repo: PlainRepository, lease: dict[str, Any],
                 info: ServerInfo, alerts: list[tuple[str, str, dict[str, Any]]], backup_id: str) -> None:
        self.api, self.conn, self.repo, self.lease = api, conn, repo, lease
        self.info, self.alerts, self.backup_id = info, alerts, backup_id
        self.pid: int | None = None
        self.pipe: Any = None
        self.adopted = False
        self._stream_taken = False
        self._renewing = threading.Event()  # set: stop renewing (the run holds the lease, or it is given back)
        self._renewer: threading.Thread | None = None

    # -- in the run -----------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        return self.info

    def take_stream(self, backup_id: str) -> bool:
        """True once, for the dump step of this backup; a retry then dumps anew."""
        if self._stream_taken or backup_id != self.backup_id:
            return False
        self._stream_taken = True
        return True

    def dump_result(self, on_progress: Callable[[int], None]) -> DumpResult:
        """Wait for the child's stream; its progress goes to `on_progress`, its error is raised."""
        from pgkeeper.dumpstream import DumpResult

        outcome: dict[str, Any] = {}
        try:
            for line in self.pipe:
                message = json.loads(line)
                if "progress" in message:
                    on_progress(int(message["progress"]))
                else:
                    outcome = message
        finally:
            self.stop()
        if "result" in outcome:
            return DumpResult.model_validate(outcome["result"])
        raise _error_of(outcome)

    # -- in the command -------------------------------------------------------------------

    def fork_stream(self) -> None:
        """The dump in a child process: its own interpreter lock, so it streams at full speed while
        this process imports Prefect; it dies with this process (a SIGKILL included)."""
        parent = os.getpid()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            _stream_child(parent, write_end, self.conn, self.repo, self.backup_id)
        os.close(write_end)
        self.pid, self.pipe = pid, os.fdopen(read_end, "r")
        self._renewer = threading.Thread(target=self._renew, name="early-slot-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        # The import and the run's creation take seconds; a lease lasts a minute. A busy machine
        # can stretch the seconds, so the lease is kept alive until the run's slot holds it.
        while not self._renewing.wait(RENEW_EVERY_S):
            try:
                self.api.renew_lease(self.lease["lease_id"], LEASE_SECONDS)
            except ApiError:
                pass  # the next try, or the run's own renewal, will tell

    def hand_over_lease(self) -> dict[str, Any]:
        """The lease, for the run's backup slot (which renews and releases it from now on)."""
        self._renewing.set()
        if self._renewer is not None:
            self._renewer.join()
        return self.lease

    def stop(self) -> None:
        """The child stopped and reaped (its pg_dump dies with it)."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.pid = None
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None

    def give_up(self) -> None:
        """Undo a start no run adopted: the stream stopped, its folder removed, the slot given back."""
        self.stop()
        self.repo.storage().abandon_backup(self.backup_id)
        if not self._renewing.is_set():
            self.hand_over_lease()
            try:
                self.api.release_lease(self.lease["lease_id"])
            except ApiError:
                pass  # it expires within LEASE_SECONDS


def _error_of(outcome: dict[str, Any], what: str = "pg_dump") -> Exception:
    """The child's error as the kind it was (one line); anything unexpected is transient, so the
    dump step's retry dumps anew."""
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


def _stream_child(parent: int, write_end: int, conn: PlainConnection, repo: PlainRepository, backup_id: str) -> None:
    code = 1
    try:
        from pgkeeper.pgtools import _die_with_parent

        _die_with_parent(parent)
        with os.fdopen(write_end, "w", buffering=1) as out:
            try:
                from pgkeeper.dumpstream import dump_in_snapshot

                result = dump_in_snapshot(conn, repo, backup_id,
                                          lambda raw: out.write(json.dumps({"progress": raw}) + "\n"))
                out.write(json.dumps({"result": result.model_dump(mode="json")}) + "\n")
                code = 0
            except BaseException as exc:  # reported to the run's dump step, never printed here
                from pgkeeper.fmt import first_line

                out.write(json.dumps({"error": type(exc).__name__, "message": first_line(exc),
                                      "transient": getattr(exc, "transient", None)}) + "\n")
    finally:
        os._exit(code)  # no exit handlers, no buffers of the parent's flushed twice


def start_backup(args: argparse.Namespace, api_url: str) -> EarlyBackup | None:
    """Begin `pgkeeper backup` before Prefect is imported when the run is sure to choose the same
    connection and repository; None (today's path) otherwise. See the module's docstring."""
    global _pending
    from pgkeeper.settings import early_start_enabled

    if not early_start_enabled() or os.environ.get("PREFECT_API_URL") != api_url:
        return None  # an API from a Prefect profile may carry credentials only Prefect reads
    if args.connection_block or args.repository_block or not (args.backup_dir or os.environ.get("BACKUP_DIR")):
        return None
    from pgkeeper import keys
    from pgkeeper.repository import repository_from_env

    api = Api(api_url)
    try:
        conn = connection_from_env(database=args.database, host=args.host, port=args.port, user=args.user)
        repo = repository_from_env(path=args.backup_dir)
        # Without a manifest key in the key directory the run would look for Secret blocks.
        if not keys.mac_keys():
            return None
        if api.block_exists(CONNECTION_SLUG, DEFAULT_CONNECTION_BLOCK) or \
                api.block_exists(REPOSITORY_SLUG, DEFAULT_REPOSITORY_BLOCK):
            return None  # the run takes its settings from those blocks
        limit = database_limit_name(conn.database, f"{conn.host}:{conn.port}")
        api.ensure_limit(limit)
        lease = api.try_lease(limit, LEASE_SECONDS)
    except (ApiError, PgkeeperError, OSError, ValueError):
        return None  # the run meets the same trouble in its own steps, and says so
    if lease is None:
        return None  # another backup of this database runs: the run waits for it as before
    backup_id = None
    try:
        from pgkeeper.claim import claim_backup_id
        from pgkeeper.serverinfo import server_facts

        alerts: list[tuple[str, str, dict[str, Any]]] = []
        info = server_facts(conn, repo, lambda kind, message, **details: alerts.append((kind, message, details)))
        backup_id = claim_backup_id(repo.storage(), info.server_time, info.server)
        early = EarlyBackup(api, conn, repo, lease, info, alerts, backup_id)
        early.fork_stream()
    except BaseException as exc:
        if backup_id is not None:
            repo.storage().abandon_backup(backup_id)
        try:
            api.release_lease(lease["lease_id"])
        except ApiError:
            pass  # it expires within LEASE_SECONDS
        if isinstance(exc, Exception):
            return None  # e.g. no room, the wrong cluster: the run's preflight says so
        raise
    _pending = early
    return early


def same_choice(early: EarlyBackup, conn: Any, repo: RepositoryVerbs) -> bool:
    """Whether the run chose what the early start chose: the same server, database, role,
    password and TLS settings, and the same repository, compression and encryption."""
    def of(r: Any) -> tuple[Any, ...]:
        return (str(r.path), r.compression, r.level(), r.encrypts(), list(r.encryption_recipients),
                r.dump_timeout_seconds)

    return conn.libpq_env() == early.conn.libpq_env() and of(repo) == of(early.repo)


def adopt(conn: Any, repo: RepositoryVerbs) -> EarlyBackup | None:
    """For the backup run: this process's early start when it made the run's choices (then the
    run holds its slot lease from here on), else None; one that does not match is undone."""
    global _pending
    early, _pending = _pending, None
    if early is None:
        return None
    if not same_choice(early, conn, repo):
        early.give_up()
        return None
    early.adopted = True
    early.hand_over_lease()
    return early


def finish(early: EarlyBackup | None) -> None:
    """At the command's end: a start no run adopted is undone; an adopted one has no child left."""
    global _pending
    if early is None:
        return
    if _pending is early:
        _pending = None
    if not early.adopted:
        early.give_up()
        return
    early.stop()
    # A run that failed before its dump step left the folder to its claimer: no manifest, no backup.
    storage = early.repo.storage()
    if early.backup_id not in storage.list_backup_ids():
        storage.abandon_backup(early.backup_id)

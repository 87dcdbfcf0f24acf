"""`pgkeeper base-backup`'s early start: pg_basebackup streams while Prefect is still imported.

The same idea as `pgkeeper backup`'s (pgkeeper/early.py, whose conditions and API checks it
shares): when the run is sure to make the same choices as the command line can make without
Prefect, the command refreshes the WAL config file, makes the preflight checks
(`basestream.cluster_facts`), claims the backup id (`claim.claim_backup_id`) and forks a child
that streams the backup into that id (`basestream.stream_into`: pg_basebackup, zstd, the check
against backup_manifest, fsynced files). The child dies with this process (PR_SET_PDEATHSIG;
pg_basebackup dies with the child) and sends its result, or its error in one line, through a
pipe. The run's wal-settings, physical-preflight, begin-backup and pg-basebackup steps adopt
those answers; everything after the stream (WAL check, verification, manifest last) is the
run's, unchanged. A base backup takes no concurrency slot, so there is no lease to hand over.

It steps aside (today's path) whenever the choice could differ, as pgkeeper/early.py does, and
also for a cluster with tablespaces of its own (staged, not streamed). A run that does not
adopt it stops the child and removes its folder; a claimed folder without a manifest is never
a backup (pgkeeper list does not show it; the next run's garbage collection removes it).
Nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
import signal
from typing import TYPE_CHECKING, Any

from pgkeeper.connection import PlainConnection, connection_from_env
from pgkeeper.early import CONNECTION_SLUG, REPOSITORY_SLUG, _error_of, same_choice
from pgkeeper.early_api import Api, ApiError
from pgkeeper.errors import PgkeeperError
from pgkeeper.names import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK

if TYPE_CHECKING:
    import argparse

    from pgkeeper.basestream import BaseBackupFiles, ClusterInfo
    from pgkeeper.repository import PlainRepository, RepositoryVerbs
    from pgkeeper.wal.config import WalConfig

# The early start of this process, until the run adopts it (or the command gives it up).
_pending: EarlyBaseBackup | None = None


class EarlyBaseBackup:
    """A base backup begun before its run existed: WAL config, preflight answer, claimed id, stream."""

    def __init__(self, conn: PlainConnection, repo: PlainRepository, wal_config: str | None, walcfg: WalConfig,
                 info: ClusterInfo, alerts: list[tuple[str, str, dict[str, Any]]], backup_id: str) -> None:
        self.conn, self.repo, self.wal_config, self.walcfg = conn, repo, wal_config, walcfg
        self.info, self.alerts, self.backup_id = info, alerts, backup_id
        self.pid: int | None = None
        self.pipe: Any = None
        self.adopted = False
        self._stream_taken = False

    # -- in the run -----------------------------------------------------------------------

    def take_stream(self, backup_id: str) -> bool:
        """True once, for the pg-basebackup step of this backup; a retry then streams anew."""
        if self._stream_taken or backup_id != self.backup_id:
            return False
        self._stream_taken = True
        return True

    def result(self) -> BaseBackupFiles:
        """Wait for the child's stream; its error is raised (one line, its kind kept)."""
        from pgkeeper.basestream import BaseBackupFiles

        outcome: dict[str, Any] = {}
        try:
            for line in self.pipe:
                outcome = json.loads(line)
        finally:
            self.stop()
        if "result" in outcome:
            return BaseBackupFiles.model_validate(outcome["result"])
        raise _error_of(outcome, "pg_basebackup")

    # -- in the command -------------------------------------------------------------------

    def fork_stream(self) -> None:
        """The stream in a child process: its own interpreter lock, so it streams at full speed
        while this process imports Prefect; it dies with this process (a SIGKILL included)."""
        parent = os.getpid()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            _stream_child(parent, write_end, self.conn, self.repo, self.backup_id)
        os.close(write_end)
        self.pid, self.pipe = pid, os.fdopen(read_end, "r")

    def stop(self) -> None:
        """The child stopped and reaped (its pg_basebackup dies with it)."""
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
        """Undo a start no run adopted: the stream stopped, its folder removed."""
        self.stop()
        self.repo.storage().abandon_backup(self.backup_id)


def _stream_child(parent: int, write_end: int, conn: PlainConnection, repo: PlainRepository, backup_id: str) -> None:
    code = 1
    try:
        from pgkeeper.pgtools import _die_with_parent

        _die_with_parent(parent)
        with os.fdopen(write_end, "w", buffering=1) as out:
            try:
                from pgkeeper.basestream import stream_into

                files = stream_into(conn, repo, backup_id)
                out.write(json.dumps({"result": files.model_dump(mode="json")}) + "\n")
                code = 0
            except BaseException as exc:  # reported to the run's pg-basebackup step, never printed here
                from pgkeeper.fmt import first_line

                out.write(json.dumps({"error": type(exc).__name__, "message": first_line(exc),
                                      "transient": getattr(exc, "transient", None)}) + "\n")
    finally:
        os._exit(code)  # no exit handlers, no buffers of the parent's flushed twice


def start_base_backup(args: argparse.Namespace, api_url: str) -> EarlyBaseBackup | None:
    """Begin `pgkeeper base-backup` before Prefect is imported when the run is sure to choose the
    same connection, repository and WAL config; None (today's path) otherwise."""
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
        if not keys.mac_keys():  # without a manifest key in the key directory the run looks for Secret blocks
            return None
        if api.block_exists(CONNECTION_SLUG, DEFAULT_CONNECTION_BLOCK) or \
                api.block_exists(REPOSITORY_SLUG, DEFAULT_REPOSITORY_BLOCK):
            return None  # the run takes its settings from those blocks
    except (ApiError, PgkeeperError, OSError, ValueError):
        return None  # the run meets the same trouble in its own steps, and says so
    backup_id = None
    try:
        from pgkeeper.basestream import cluster_facts, refresh_wal_config
        from pgkeeper.claim import claim_backup_id
        from pgkeeper.names import server_key

        # The run's order: the WAL config first (archive_command reads it while the stream waits
        # for its stop segment), then the checks, then the id.
        walcfg = refresh_wal_config(repo, args.wal_config)
        alerts: list[tuple[str, str, dict[str, Any]]] = []
        info = cluster_facts(conn, repo, lambda kind, message, **details: alerts.append((kind, message, details)))
        if info.tablespaces:
            return None  # staged, not streamed: the run's own step
        backup_id = claim_backup_id(repo.storage(), info.server_time,
                                    server_key(conn.host, conn.port, info.system_identifier))
        early = EarlyBaseBackup(conn, repo, args.wal_config, walcfg, info, alerts, backup_id)
        early.fork_stream()
    except BaseException as exc:
        if backup_id is not None:
            repo.storage().abandon_backup(backup_id)
        if isinstance(exc, Exception):
            return None  # e.g. archiving off, no room, the wrong cluster: the run's preflight says so
        raise
    _pending = early
    return early


def adopt(conn: Any, repo: RepositoryVerbs, wal_config: str | None) -> EarlyBaseBackup | None:
    """For the base-backup run: this process's early start when it made the run's choices, else
    None; one that does not match is undone."""
    global _pending
    early, _pending = _pending, None
    if early is None:
        return None
    if early.wal_config != wal_config or not same_choice(early, conn, repo):  # type: ignore[arg-type]
        early.give_up()
        return None
    early.adopted = True
    return early


def finish(early: EarlyBaseBackup | None) -> None:
    """At the command's end: a start no run adopted is undone; an adopted one has no child left,
    and its folder is removed unless its manifest was written."""
    global _pending
    if early is None:
        return
    if _pending is early:
        _pending = None
    if not early.adopted:
        early.give_up()
        return
    early.stop()
    storage = early.repo.storage()
    if early.backup_id not in storage.list_backup_ids():
        storage.abandon_backup(early.backup_id)

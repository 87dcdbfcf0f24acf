"""`pgkeeper base-backup`'s early start: pg_basebackup streams while Prefect is still imported.

The same idea as `pgkeeper backup`'s (pgkeeper/early.py; the conditions, API checks and forked
stream both use are in pgkeeper/early_stream.py): when the run is sure to make the same choices
as the command line can make without Prefect, the command refreshes the WAL config file, makes the preflight checks
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

import os
from typing import TYPE_CHECKING, Any

from pgkeeper.early_stream import ForkedStream, Send, WaitingChild, early_choices, same_choice, take_pending

if TYPE_CHECKING:
    import argparse

    from pgkeeper.basestream import BaseBackupFiles, ClusterInfo
    from pgkeeper.connection import PlainConnection
    from pgkeeper.repository import PlainRepository, RepositoryVerbs
    from pgkeeper.wal.config import WalConfig


class EarlyBaseBackup(ForkedStream):
    """A base backup begun before its run existed: WAL config, preflight answer, claimed id, stream."""

    what = "pg_basebackup"

    def __init__(self, conn: PlainConnection, repo: PlainRepository, wal_config: str | None, walcfg: WalConfig,
                 info: ClusterInfo, alerts: list[tuple[str, str, dict[str, Any]]], backup_id: str,
                 waiting: WaitingChild | None = None) -> None:
        super().__init__(conn, repo, backup_id, waiting)
        self.wal_config, self.walcfg, self.info, self.alerts = wal_config, walcfg, info, alerts

    def stream(self, send: Send) -> dict[str, Any]:
        from pgkeeper.basestream import stream_into

        return stream_into(self.conn, self.repo, self.backup_id).model_dump(mode="json")

    def result(self) -> BaseBackupFiles:
        """Wait for the child's stream; its error is raised (one line, its kind kept)."""
        from pgkeeper.basestream import BaseBackupFiles

        return BaseBackupFiles.model_validate(self.outcome())


def tool_first(conn: PlainConnection, repo: PlainRepository) -> WaitingChild:
    """The stream's child, forked before the checks: it starts pg_basebackup at once (the
    server's checkpoint and the backup's start then run beside the checks and their imports
    here; the tool writes to its pipe only, and fills it, until told the claimed id) and imports
    what the stream needs meanwhile. Its label names this command's process, as the id is not
    claimed yet."""
    def prepare() -> Any:
        from contextlib import ExitStack

        from pgkeeper.basebackup_tool import started_pg_basebackup

        # Held open by the stream (an unreferenced block would close, killing the tool); the
        # child ends with os._exit, and the tool with it (PR_SET_PDEATHSIG).
        stack = ExitStack()
        started = stack.enter_context(started_pg_basebackup(conn, repo, early_label(parent)))
        import pgkeeper.basestream  # noqa: F401  # the stream's imports while the command checks

        return stack, started

    def stream(backup_id: str, prepared: Any, send: Send) -> dict[str, Any]:
        from pgkeeper.basestream import stream_into

        stack, started = prepared
        with stack:
            return stream_into(conn, repo, backup_id, started).model_dump(mode="json")

    parent = os.getpid()
    return WaitingChild(prepare, stream)


def early_label(pid: int) -> str:
    """The backup label of a stream started before its id was claimed."""
    return f"pgkeeper base-backup of process {pid}"


def start_base_backup(args: argparse.Namespace, api_url: str) -> EarlyBaseBackup | None:
    """Begin `pgkeeper base-backup` before Prefect is imported when the run is sure to choose the
    same connection, repository and WAL config; None (today's path) otherwise."""
    choices = early_choices(args, api_url)
    if choices is None:
        return None
    _, conn, repo = choices
    backup_id = None
    waiting = None
    try:
        from pgkeeper.wal.setup import refresh_wal_config  # without basestream's imports: before the fork

        # The run's order: the WAL config first (archive_command reads it while the stream waits
        # for its stop segment), then the checks, then the id. pg_basebackup starts between the
        # first two: it cannot reach its stop segment before the stream reads its pipe, which
        # only happens once the checks passed and the id is claimed.
        walcfg = refresh_wal_config(repo, args.wal_config)
        waiting = tool_first(conn, repo)
        from pgkeeper.basestream import cluster_facts
        from pgkeeper.claim import claim_backup_id
        from pgkeeper.names import server_key

        alerts: list[tuple[str, str, dict[str, Any]]] = []
        info = cluster_facts(conn, repo, lambda kind, message, **details: alerts.append((kind, message, details)))
        if info.tablespaces:
            waiting.stop()
            return None  # staged, not streamed: the run's own step
        backup_id = claim_backup_id(repo.storage(), info.server_time,
                                    server_key(conn.host, conn.port, info.system_identifier))
        early = EarlyBaseBackup(conn, repo, args.wal_config, walcfg, info, alerts, backup_id, waiting)
        early.fork_stream()
    except BaseException as exc:
        if waiting is not None:
            waiting.stop()
        if backup_id is not None:
            repo.storage().abandon_backup(backup_id)
        if isinstance(exc, Exception):
            return None  # e.g. archiving off, no room, the wrong cluster: the run's preflight says so
        raise
    return early


def adopt(conn: Any, repo: RepositoryVerbs, wal_config: str | None) -> EarlyBaseBackup | None:
    """For the base-backup run: this process's early start when it made the run's choices, else
    None; one that does not match is undone."""
    early = take_pending(EarlyBaseBackup)
    if early is None:
        return None
    if early.wal_config != wal_config or not same_choice(early, conn, repo):
        early.give_up()
        return None
    early.adopted = True
    return early


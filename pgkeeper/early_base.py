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

from typing import TYPE_CHECKING, Any

from pgkeeper.early_stream import ForkedStream, Send, early_choices, same_choice, take_pending

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
                 info: ClusterInfo, alerts: list[tuple[str, str, dict[str, Any]]], backup_id: str) -> None:
        super().__init__(conn, repo, backup_id)
        self.wal_config, self.walcfg, self.info, self.alerts = wal_config, walcfg, info, alerts

    def stream(self, send: Send) -> dict[str, Any]:
        from pgkeeper.basestream import stream_into

        return stream_into(self.conn, self.repo, self.backup_id).model_dump(mode="json")

    def result(self) -> BaseBackupFiles:
        """Wait for the child's stream; its error is raised (one line, its kind kept)."""
        from pgkeeper.basestream import BaseBackupFiles

        return BaseBackupFiles.model_validate(self.outcome())


def start_base_backup(args: argparse.Namespace, api_url: str) -> EarlyBaseBackup | None:
    """Begin `pgkeeper base-backup` before Prefect is imported when the run is sure to choose the
    same connection, repository and WAL config; None (today's path) otherwise."""
    choices = early_choices(args, api_url)
    if choices is None:
        return None
    _, conn, repo = choices
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


"""The backup flow: preflight → dump (in a snapshot, counted) → verify → manifest → report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.states import State

from pgkeeper.config import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK, load_connection, load_repository
from pgkeeper.early import adopt as adopt_early
from pgkeeper.flows.after_backup import after_backup
from pgkeeper.flows.quick import flow
from pgkeeper.fmt import contents, human_bytes, human_seconds
from pgkeeper.manifest import Manifest
from pgkeeper.runinfo import (
    KIND_PRE_RESTORE,
    beside,
    completed,
    database_tag,
    describe_run,
    name_from_parameters,
    today,
    untagged_tasks,
)
from pgkeeper.sentry import report_failure
from pgkeeper.slots import backup_slot
from pgkeeper.tasks.catalog_artifact import publish_catalog
from pgkeeper.tasks.dump import dump_database
from pgkeeper.tasks.notify import mail_backup_success
from pgkeeper.tasks.preflight import preflight
from pgkeeper.tasks.report import report_backup
from pgkeeper.tasks.store import abandon_backup, begin_backup, write_manifest
from pgkeeper.tasks.verify import quick_verify

if TYPE_CHECKING:
    from pgkeeper.repository import RepositoryVerbs


@flow(name="backup", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],  # Sentry
      flow_run_name=name_from_parameters("backup", "database", "connection_block"))
def backup(
    database: str | None = None,
    connection_block: str | None = DEFAULT_CONNECTION_BLOCK,
    repository_block: str | None = DEFAULT_REPOSITORY_BLOCK,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    backup_dir: str | None = None,
    labels: list[str] | None = None,
) -> Manifest | State:
    """Back up one database into the repository and prove the file reads back.

    Settings come from the named blocks, else (or with no block name) from the old scripts'
    environment variables; the other parameters override them.
    """
    # Its task runs carry no tags: no concurrency request per task for the run's tags (no subflow starts here).
    with untagged_tasks():
        conn = load_connection(connection_block, database=database, host=host, port=port, user=user)
        repo = load_repository(repository_block, path=backup_dir)
        kind = KIND_PRE_RESTORE if KIND_PRE_RESTORE in (labels or []) else "backup"
        describe_run(f"backup {conn.database} {today()}" + (f" ({kind})" if kind != "backup" else ""),
                     [database_tag(conn.database), kind])

        # What `pgkeeper backup` began before this run existed (slot, preflight, id, stream), when
        # it chose as this run does; its steps below then adopt it instead of starting anew.
        early = adopt_early(conn, repo)
        with backup_slot(conn.database, f"{conn.host}:{conn.port}",  # never two backups of one database at once
                         lease=early.lease if early else None):
            info = preflight(conn, repo, early)
            backup_id = begin_backup(repo, info.server_time, info.server, early)
            try:
                dumped = dump_database(conn, repo, backup_id, info.table_bytes, early)
                check = quick_verify(repo, backup_id, dumped.file, repo.compression, len(dumped.tables), dumped.toc,
                                     dumped.decompressed)
                manifest = write_manifest(repo, backup_id, info, dumped, check, labels or [])
            except BaseException:
                if early is not None:
                    early.stop()  # no stream may write into a folder being removed
                abandon_backup(repo, backup_id)
                raise
        if manifest.database != conn.database:  # a restore's pre-restore copy (pgkeeper/old_copy.py)
            from pgkeeper.tasks.swap import record_safety_backup

            # Named and tagged by the database it was: the copy's name is a restore's detail.
            describe_run(f"backup {manifest.database} {today()} ({KIND_PRE_RESTORE})",
                         [database_tag(manifest.database), KIND_PRE_RESTORE], replacing=[database_tag(conn.database)])
            record_safety_backup(conn, conn.database, backup_id)  # it may expire from now on
        # The summary artifact and the success event/mail need only the manifest: they wait on the
        # API beside the steps that change the repository (upload, retention, garbage collection).
        with beside(report_and_announce, manifest, repo, info.warnings):
            after = after_backup(repo, backup_id)  # offsite upload → retention → garbage collection
            publish_catalog(repo)  # the UI's keyed catalog artifact, after retention
        # The result: the manifest as written, and the run's final line, which also says what the
        # steps after it did (they change the repository, not the manifest).
        return completed(manifest, result_line(manifest) + "".join(f"; {line}" for line in after))


def report_and_announce(manifest: Manifest, repo: RepositoryVerbs, warnings: list[str]) -> None:
    """The run's summary artifact, then pgkeeper.backup.completed (it mails without the automation)."""
    report_backup(manifest, repo.storage().describe(), warnings)
    mail_backup_success(manifest, repo, warnings)


def result_line(m: Manifest) -> str:
    """The run's final message: what a person checks first."""
    ratio = f", ratio {m.ratio:.1f}x" if m.ratio else ""
    return (f"{m.backup_id} of {m.database}: {human_bytes(m.size)}{ratio}, "
            f"{contents(len(m.tables), m.objects.get('indexes', 0), sum(m.tables.values()))}, "
            f"{human_seconds(m.duration_seconds)}, {m.status}")

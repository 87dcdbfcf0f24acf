"""The pitr flow: recover the cluster, as it was at a moment, into a new data directory.

choose base backup → unpack (checksum-checked) → recovery settings → start → wait for
promotion → report. The original cluster is never touched.
"""

from __future__ import annotations

import time

from prefect import flow

from pgkeeper.config import DEFAULT_REPOSITORY_BLOCK, load_repository
from pgkeeper.recovery_choice import parse_target
from pgkeeper.runinfo import name_from_parameters, untagged_tasks
from pgkeeper.sentry import report_failure
from pgkeeper.tasks.archive import make_readable
from pgkeeper.tasks.recovery import (
    RecoveryResult,
    archive_cluster,
    choose_base_backup,
    configure_recovery,
    forget_recovery_secrets,
    report_recovery,
    resolve_source,
    restore_base_backup,
    start_recovery,
    wait_for_promotion,
)
from pgkeeper.wal.config import load as load_wal_config
from pgkeeper.wal.setup import config_from_repository


@flow(name="pitr", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],  # Sentry
      flow_run_name=name_from_parameters("pitr", "target_time", "target_lsn", "target_name"))
def pitr(
    data_dir: str,
    port: int = 5439,
    target_time: str | None = None,
    target_lsn: str | None = None,
    target_name: str | None = None,
    latest: bool = False,
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    backup_dir: str | None = None,
    source: str = "auto",
    wal_config: str | None = None,
    keep_archiving: bool = False,
    timeout_seconds: int = 3600,
    system_identifier: str | None = None,
    wait_for_archive: bool = False,
    retrieval_tier: str | None = None,  # Expedited, Standard or Bulk (checked by make_readable)
    archive_poll_seconds: float = 60.0,
) -> RecoveryResult:
    """Recover to `target_time` (or an LSN, a restore point, or the latest archived WAL) into
    `data_dir`, start PostgreSQL there on `port`, and leave it running and promoted.

    `source` is where the base backup is read: 'local', 's3', or 'auto' (local if it holds a
    base backup, else the offsite bucket: recovery on a new machine that has only the bucket).
    WAL comes from `wal_config` if given, else from the repository block (spool, then S3).
    Only base backups of one cluster are used: `system_identifier` if given, else the cluster
    the WAL archive belongs to (its archive.json); the log and the artifact say which.
    """
    started = time.monotonic()
    with untagged_tasks():  # no concurrency-slot round trips per step (runinfo.untagged_tasks)
        target = parse_target(target_time, target_lsn, target_name, latest)
        repo = load_repository(repository_block, path=backup_dir)
        source = resolve_source(repo, source)
        walcfg = load_wal_config(wal_config) if wal_config else config_from_repository(repo)

        cluster = archive_cluster(walcfg, system_identifier)
        manifest = choose_base_backup(repo, source, target, cluster)
        if source == "s3":  # an archived base backup (a monthly) needs a restore request first
            make_readable(repo.storage("s3"), manifest.backup_id, retrieval_tier or repo.retrieval_tier,
                          wait_for_archive, archive_poll_seconds)
        restore_base_backup(repo, source, manifest, data_dir)
        try:
            configure_recovery(data_dir, walcfg, target, port, keep_archiving)
            start_recovery(data_dir, port, target, timeout_seconds, manifest)
            result = wait_for_promotion(data_dir, port, manifest.backup_id, target, started, timeout_seconds)
        finally:
            forget_recovery_secrets(data_dir)
        result.system_identifier = manifest.system_identifier
        report_recovery(result)
        return result

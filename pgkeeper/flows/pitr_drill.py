"""The pitr-drill flow, scheduled weekly: prove that the newest base backup plus the archived
WAL recover, before anyone needs them to.

source's clock → archive continuous? → unpack the newest base backup into a scratch directory →
pg_verifybackup of the unpacked copy and its WAL → recover to the end of the archive on a free
port → queryable (RTO) → pg_amcheck, row counts → RPO (the source's clock at the start minus
the last replayed transaction) → record RTO and RPO in the base backup's manifest → artifact →
remove the scratch. Any failure fails the run, which sends the failure mail.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from pgkeeper.config import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK, load_connection, load_repository
from pgkeeper.localcluster import free_port, scratch_dir
from pgkeeper.manifest import Manifest
from pgkeeper.recovery_choice import parse_target
from pgkeeper.runinfo import name_from_parameters
from pgkeeper.sentry import report_failure
from pgkeeper.tasks.basebackup import verify_unpacked_backup
from pgkeeper.tasks.pitr_drill import (
    DrillReport,
    drill_checks,
    drill_continuity,
    measure_rpo,
    record_drill,
    remove_scratch,
    report_drill,
    source_clock,
)
from pgkeeper.tasks.recovery import (
    archive_cluster,
    choose_base_backup,
    configure_recovery,
    resolve_source,
    restore_base_backup,
    start_recovery,
    wait_for_promotion,
)
from pgkeeper.wal.config import load as load_wal_config
from pgkeeper.wal.setup import config_from_repository


@flow(name="pitr-drill", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],
      flow_run_name=name_from_parameters("pitr-drill", "connection_block"))
def pitr_drill(
    connection_block: str = DEFAULT_CONNECTION_BLOCK,
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    backup_dir: str | None = None,
    source: str = "auto",
    wal_config: str | None = None,
    system_identifier: str | None = None,
    timeout_seconds: int = 3600,
) -> Manifest:
    """Recover the newest base backup of the archive's cluster to the latest archived WAL in a
    scratch directory, check it, and record RTO and RPO in its manifest. The connection block
    names the source cluster: its credentials open the recovered copy, its clock measures RPO."""
    conn = load_connection(connection_block)
    repo = load_repository(repository_block, path=backup_dir)
    source = resolve_source(repo, source)
    walcfg = load_wal_config(wal_config) if wal_config else config_from_repository(repo)
    target = parse_target(latest=True)

    cluster = archive_cluster(walcfg, system_identifier)
    manifest = choose_base_backup(repo, source, target, cluster)
    continuity = drill_continuity(walcfg, manifest)
    data_dir = scratch_dir("pgkeeper-pitr-drill-") / "data"
    report = DrillReport(backup_id=manifest.backup_id, system_identifier=manifest.system_identifier,
                         data_dir=str(data_dir), port=free_port(), checks={"archive continuity": continuity})
    source_now = source_clock(conn)
    started = time.monotonic()
    try:
        restore_base_backup(repo, source, manifest, str(data_dir))
        checking = time.monotonic()
        report.checks["pg_verifybackup"] = verify_unpacked_backup(repo, source, manifest, str(data_dir), walcfg)
        started += time.monotonic() - checking  # a check, not part of the time to recover (RTO)
        configure_recovery(str(data_dir), walcfg, target, report.port)
        start_recovery(str(data_dir), report.port, target, timeout_seconds)
        recovered = wait_for_promotion(str(data_dir), report.port, manifest.backup_id, target, started,
                                       timeout_seconds)
        report.recovered_to, report.timeline = recovered.last_transaction_at, recovered.timeline
        report = drill_checks(conn, report, manifest, started)
        report = measure_rpo(report, source_now)
        report.ok = True
    finally:
        remove_scratch(Path(report.data_dir))
        report_drill(report)
    return record_drill(repo, source, report)

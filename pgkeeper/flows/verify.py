"""The verify flow: a backup counts as good only after a real restore of it matched the source.

resolve → fetch (test 1) → format (test 2) → restore drill (test 3) → data (test 4)
→ freshness (test 5) → anomalies → record in the manifest → artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import State

from pgkeeper.anomaly import DEFAULT_THRESHOLD
from pgkeeper.config import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK, load_connection, load_repository
from pgkeeper.errors import PgkeeperError
from pgkeeper.events import backup_verified
from pgkeeper.names import LATEST, parse_backup_ref
from pgkeeper.runinfo import completed, database_tag, describe_run, name_from_parameters
from pgkeeper.sentry import report_failure
from pgkeeper.tasks.archive import make_readable
from pgkeeper.tasks.catalog_artifact import publish_catalog
from pgkeeper.tasks.drill import (
    drop_scratch_after_run,
    restore_drill,
    scratch_connection,
    scratch_database_name,
    work_area,
)
from pgkeeper.tasks.verify import UnreadableDump
from pgkeeper.tasks.verify_checks import (
    CheckResult,
    VerificationFailed,
    VerifyReport,
    check_anomalies,
    check_data,
    check_format,
    check_freshness,
    check_stream,
    fetch_dump,
    integrity_passed,
    resolve_for_verify,
    restore_passed,
)
from pgkeeper.tasks.verify_record import record_verification, report_verification

T = TypeVar("T")


@flow(name="verify", log_prints=True, on_crashed=[drop_scratch_after_run, report_failure],
      on_failure=[report_failure],
      on_cancellation=[drop_scratch_after_run],
      flow_run_name=name_from_parameters("verify", "database", "backup"))
def verify(
    backup: str = "latest",
    database: str | None = None,
    restore: bool = True,
    source: str = "local",
    connection_block: str | None = DEFAULT_CONNECTION_BLOCK,
    repository_block: str | None = DEFAULT_REPOSITORY_BLOCK,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    backup_dir: str | None = None,
    scratch_connection_block: str | None = None,
    jobs: int = 2,
    max_age_hours: float = 26.0,
    anomaly_threshold: float = DEFAULT_THRESHOLD,
    history: int = 10,
    work_dir: str | None = None,
    restore_timeout_seconds: float = 6 * 3600,
    wait_for_archive: bool = False,
    retrieval_tier: str | None = None,  # Expedited, Standard or Bulk (checked by make_readable)
    archive_poll_seconds: float = 60.0,
    server: str | None = None,
) -> VerifyReport | State:
    """Prove a backup ('latest', an id, or an old file name) by restoring it into a scratch database.

    The scratch database lives on the backed-up database's server unless
    `scratch_connection_block` names another, and is dropped whatever happens. With
    restore=False only integrity and format are checked. Fails the run if any check fails;
    warns (pgkeeper.warning event) when the backup shrank by more than `anomaly_threshold`.
    `server` picks among servers whose backups share the database's name (host:port, system
    identifier or server key); by default the connection's host:port breaks such a tie.
    """
    log = get_run_logger()
    repo = load_repository(repository_block, path=backup_dir)
    prefer: tuple[str, ...] = ()
    if parse_backup_ref(backup) == LATEST:  # the configured database's, never another's
        conn = load_connection(connection_block, host=host, port=port, user=user)
        database, prefer = database or conn.database, (f"{conn.host}:{conn.port}",)
    catalog = resolve_for_verify(repo, source, backup, database, server, prefer)
    target = catalog.target
    describe_run(f"verify {target.database} {target.backup_id}", [database_tag(target.database), "verify"])
    log.info("verifying %s of %s from %s", target.backup_id, target.database, source)
    if source == "s3":  # an archived backup (GLACIER, DEEP_ARCHIVE) needs a restore request first
        make_readable(repo.storage("s3"), target.backup_id, retrieval_tier or repo.retrieval_tier, wait_for_archive,
                      archive_poll_seconds)
    checks: list[CheckResult] = []

    def check(number: int, step: Callable[..., T], *args: Any) -> T | None:
        """Run one step; a PgkeeperError becomes that test's FAIL line instead of ending the run."""
        try:
            return step(*args)
        except PgkeeperError as exc:
            add(CheckResult.failed(number, exc))
            return None

    def add(result: CheckResult | None) -> None:
        if result is not None:
            checks.append(result)
            (log.info if result.ok else log.error)(result.line())

    rto: float | None = None
    scratch_server: str | None = None
    if restore:
        scratch = scratch_connection(connection_block, scratch_connection_block, host, port, user)
        with work_area(work_dir) as work:
            fetched = check(1, fetch_dump, repo, source, target, str(work))
            if fetched:
                add(integrity_passed(target))
            fmt = check(2, check_format, target, fetched.path) if fetched else None
            add(fmt)
            drill = check(3, restore_drill, scratch, fetched.path, scratch_database_name(flow_run.id),
                          jobs, restore_timeout_seconds, target, repo, source) if fetched and fmt else None
            if fetched and drill:
                rto, scratch_server = fetched.seconds + drill.restore_seconds, drill.server
                add(restore_passed(drill))
                add(check(4, check_data, target, drill))
    else:
        try:
            fmt = check_stream(repo, source, target)
            add(integrity_passed(target))
            add(fmt)
        except UnreadableDump as exc:  # the bytes were intact; the archive is not what it should be
            add(integrity_passed(target))
            add(CheckResult.failed(2, exc))
        except PgkeeperError as exc:
            add(CheckResult.failed(1, exc))
    for number in range(1, 5):
        if not any(c.number == number for c in checks):
            why = "restore not requested" if not restore and number > 2 else "an earlier test failed"
            checks.append(CheckResult.skipped(number, why))
    add(check(5, check_freshness, catalog.backups, max_age_hours))
    checks.sort(key=lambda c: c.number)

    anomalies = check_anomalies(target, catalog.backups, anomaly_threshold)
    report = VerifyReport(backup_id=target.backup_id, database=target.database, source=source,
                          method="restore" if restore else "quick", checks=checks,
                          restore_seconds=rto, scratch_server=scratch_server, anomalies=anomalies)
    if report.inconclusive:  # the verifier's trouble, not the backup's: leave its record alone
        log.warning("verification of %s could not finish: nothing recorded", target.backup_id)
        updated = target
    else:
        updated = record_verification(repo, source, report)
    recent = [updated if m.backup_id == updated.backup_id else m for m in catalog.backups][-history:]
    report_verification(report, recent)
    publish_catalog(repo, source)  # the UI's keyed catalog artifact
    if not report.ok:
        log.error(report.lines()[-1])
        failed = [c.title for c in report.checks if c.status == "FAIL"]
        verdict = "could not be verified" if report.inconclusive else "failed verification"
        raise VerificationFailed(f"backup {report.backup_id} {verdict}: " + "; ".join(failed),
                                 report=report)
    backup_verified(report, updated)  # pgkeeper.backup.verified: what the absence alert waits for
    return completed(report, f"{report.backup_id} of {report.database}: {report.lines()[-1]}")

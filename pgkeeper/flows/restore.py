"""The restore flow: resolve → fetch → prove readable → confirm → shadow restore (the proof's read
of its data starts beside the post-data section) → count and prove the content (side by side) →
swap → check the swap → safety backup of the replaced database → report. Nothing destructive
happens before the swap, and the swap is a single transaction; any failure before it leaves the
target as it was and says so. The replaced database is kept, renamed, until its safety backup is
listed (tasks/safety.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.states import Cancelled, Completed, State

from pgkeeper.config import DEFAULT_CONNECTION_BLOCK, DEFAULT_REPOSITORY_BLOCK, load_connection, load_repository
from pgkeeper.early_restore import adopt as adopt_early
from pgkeeper.flows.quick import flow  # parameters recorded without FastAPI, the schema built when read
from pgkeeper.runinfo import completed, database_tag, describe_run, name_from_parameters, untagged_tasks
from pgkeeper.sentry import report_failure
from pgkeeper.tasks.archive import make_readable
from pgkeeper.tasks.confirm import (
    approved_plan,
    can_suspend,
    expire_unanswered,
    keep_plan,
    leave_expired_pause,
    schedule_expiry,
)
from pgkeeper.tasks.notify import mail_restore_done, mail_restore_not_confirmed
from pgkeeper.tasks.restore_confirmation import (
    confirmation_line,
    form_confirmation,
    given_confirmation,
    record_confirmation,
)
from pgkeeper.tasks.restore_steps import (
    RestoreFailed,
    RestorePlan,
    RestoreReport,
    check_content,
    check_counts,
    check_readable,
    cleanup_work_file,
    confirmation_form,
    create_roles_task,
    fetch_backup,
    prepare_shadow,
    refusal,
    report_restore,
    resolve_restore,
    restore_shadow,
    restore_slot,
    shadow_data_reading,
    start_archive_reading,
    unchanged_line,
)
from pgkeeper.tasks.safety import back_up_old_copy
from pgkeeper.tasks.swap import check_swapped, drop_database_task, expire_old_copies, swap_back, swap_into_place

if TYPE_CHECKING:
    from pathlib import Path

    from pgkeeper.blocks.postgres import PostgresConnection
    from pgkeeper.content_check import ArchiveReading, DataReading

CONFIRM_POLL_SECONDS = 2
EXPIRY_GRACE_SECONDS = 600  # for a worker to pick up the run that ends an unanswered wait


@flow(name="restore", log_prints=True, on_failure=[report_failure], on_crashed=[report_failure],  # Sentry
      flow_run_name=name_from_parameters("restore", "target", "database", "backup"))
def restore(
    backup: str = "latest",
    mode: Literal["replace", "new"] = "replace",
    target: str | None = None,
    source: Literal["local", "s3"] = "local",
    confirmed: bool = False,
    confirm_timeout_seconds: int = 3600,
    safety_backup: bool = True,
    keep_old: bool = True,
    keep_old_hours: float = 72,
    keep_ownership: bool = True,
    create_roles: bool = False,
    jobs: int = 2,
    plan: RestorePlan | None = None,
    database: str | None = None,
    connection_block: str = DEFAULT_CONNECTION_BLOCK,
    repository_block: str = DEFAULT_REPOSITORY_BLOCK,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    backup_dir: str | None = None,
    wait_for_archive: bool = False,
    retrieval_tier: str | None = None,  # Expedited, Standard or Bulk (checked by make_readable)
    archive_poll_seconds: float = 60.0,
    server: str | None = None,
    expire_run: str | None = None,
    detach_safety_backup: bool = False,
) -> RestoreReport | State:
    """Restore a backup into a database without risking the one that is there.

    The backup goes into a new shadow database first; only when its row counts equal the
    backup's manifest is it swapped in (one transaction), so a failure at any step leaves the
    target exactly as it was. In replace mode the run pauses for confirmation first.

    Args:
        backup: `latest` (newest backup of `database` that is not a pre-restore safety copy),
            a backup id such as `backup_20240315_143022`, or an old file name such as
            `backup_20240315_143022.sql.gz`.
        mode: `replace` puts the backup in place of `target` (asks for confirmation, keeps the
            previous database under `<target>_pre_restore_<time>`); `new` creates `target`,
            which must not exist, and touches nothing else (no confirmation needed).
        target: database to restore into. Default in replace mode: the backup's own database.
            Required in new mode.
        source: read the backup from the `local` repository or from `s3`.
        confirmed: skip the confirmation form (the CLI sets it after asking on the terminal).
            Ignored in a deployment run: there the form always asks.
        confirm_timeout_seconds: how long the form waits; then the run is cancelled, unchanged.
        safety_backup: back up the replaced database (label `pre-restore`, recorded under the
            target's name) right after the swap, from the copy the swap keeps; that copy is held,
            whatever `keep_old` says, until the backup is listed.
        keep_old: keep the replaced database (renamed) instead of dropping it after the swap.
        keep_old_hours: how long a kept copy is kept; each restore drops copies past their time.
        keep_ownership: restore the original owners and GRANTs (default). The roles must exist
            here, or be created with `create_roles`; the run refuses before touching anything
            otherwise, naming them. False: everything is owned by the database's owner role,
            GRANTs are left out, and what the backup revoked from PUBLIC stays revoked.
        create_roles: create the roles the backup needs and this server lacks, from the
            backup's roles file (existing roles are never altered).
        jobs: parallel pg_restore jobs.
        plan: the plan the caller showed and had confirmed (the command line passes it, so that
            the name the previous database is kept as is the one shown); checked against the
            other parameters and the server before use. Default: planned by the run.
        database: the database whose backups `latest` looks at (default: the connection's).
        connection_block: saved pgkeeper-postgres-connection block (else POSTGRES_* variables).
        repository_block: saved pgkeeper-backup-repository block (else BACKUP_DIR).
        host: override the connection's host.
        port: override the connection's port.
        user: override the connection's role.
        backup_dir: override the repository's local directory.
        wait_for_archive: a backup in an S3 archive class (GLACIER, DEEP_ARCHIVE) gets a restore
            request; True waits for it with progress (polling every `archive_poll_seconds`), False
            stops with one line saying when to come back (a later run finds the request under way).
        retrieval_tier: the restore request's tier (default: the repository's retrieval_tier).
        expire_run: set by a suspended restore on the run it schedules at its deadline: that run
            only ends the suspended one Cancelled if nobody answered (see below).
        server: whose backups `latest` means when several servers' backups share the database's
            name (host:port, system identifier or server key). Default: the connection's server.
        detach_safety_backup: with `keep_old`, leave the safety backup to the caller, which starts it
            as a run of its own once this one ends (`pgkeeper restore` does, so the command ends
            when the database is back in service); the report names the copy to back up.
    """
    # Its task runs carry no tags: no concurrency-slot round trips per step (runinfo.untagged_tasks);
    # the safety backup, the one subflow, gets the tag back (tasks/safety.py).
    with untagged_tasks():
        logger = get_run_logger()
        started = time.monotonic()
        if expire_run:
            return _expire(expire_run, target, confirm_timeout_seconds)
        conn = load_connection(connection_block, database=database, host=host, port=port, user=user)
        repo = load_repository(repository_block, path=backup_dir)

        expire_old_copies(conn)
        # A deployment run waits for its form suspended, holding no worker; resumed, it runs again from
        # the top and restores the plan that was approved, not a newly planned one (tasks/confirm.py).
        suspend = mode == "replace" and can_suspend()
        kept = approved_plan() if suspend else None
        if kept is not None:
            plan, backup = RestorePlan.model_validate(kept["plan"]), kept["plan"]["backup_id"]
        plan = resolve_restore(conn, repo, backup, source, mode, target, keep_ownership, create_roles, plan, server)
        describe_run(f"restore {plan.target} ← {plan.backup_id}", [database_tag(plan.target), "restore"])
        if plan.source == "s3":  # before anything is touched: an archived backup may take hours
            make_readable(repo.storage("s3"), plan.backup_id, retrieval_tier or repo.retrieval_tier, wait_for_archive,
                          archive_poll_seconds)
        # From here on every failure ends with one line saying what state the target is in.
        work_file = None
        shadow_started = False
        waited = 0.0
        shadow_data = None
        early = None
        try:
            # The work file `pgkeeper restore` began fetching before this run existed, when it is
            # the very file this plan restores; fetch-backup then waits for it instead of fetching.
            early = adopt_early(conn, repo, plan, jobs)
            work_file = fetch_backup(repo, plan, early)
            toc = check_readable(plan, work_file)

            # `confirmed` stands in for the form only outside deployment runs (restore_confirmation.py).
            confirmation = given_confirmation(confirmed) if mode == "replace" else None
            if mode == "replace" and confirmation is None:
                asked = time.monotonic()
                form = confirmation_form(plan, toc, safety_backup)
                try:
                    if suspend:
                        answer = _suspended_answer(form, plan, kept, confirm_timeout_seconds)
                        waited = (datetime.now(UTC) - datetime.fromisoformat(kept["asked_at"])).total_seconds() \
                            if kept else 0.0
                        asked = time.monotonic()  # the RTO counts this execution only
                    else:
                        answer = pause_flow_run(wait_for_input=form, timeout=confirm_timeout_seconds,
                                                poll_interval=CONFIRM_POLL_SECONDS)
                except FlowPauseTimeout:
                    message = (f"no confirmation within {confirm_timeout_seconds} s: restore cancelled, "
                               f"{unchanged_line(plan)}")
                    leave_expired_pause(message)  # else the API turns the expired pause into Failed
                    logger.warning(message)
                    mail_restore_not_confirmed(plan.target, message)
                    return Cancelled(message=message)
                waited += time.monotonic() - asked
                reason = refusal(plan, answer.confirm, answer.database_name)
                if reason:
                    logger.warning(reason)
                    mail_restore_not_confirmed(plan.target, reason)
                    return Cancelled(message=reason)
                confirmation = form_confirmation(answer.database_name)
            if confirmation is not None:
                record_confirmation(repo, plan, confirmation, keep_old)

            # The restore the early start began into this plan's shadow, holding the slot: from here
            # on the shadow is this run's (dropped on a failure), and its pg_restore is waited for.
            lease = early.take_restore() if early is not None else None
            early_restore = early if lease is not None else None
            shadow_started = early_restore is not None
            with restore_slot(plan.target, lease=lease):
                if plan.roles_to_create:
                    create_roles_task(conn, repo, plan)
                shadow_started = True
                if early_restore is None:
                    prepare_shadow(conn, plan)  # first: a locale this server lacks stops the run here
                reading = start_archive_reading(plan, work_file)  # the content proof's archive side, meanwhile
                # Its shadow side, started by restore_shadow once the data section is in (beside post-data).
                shadow_data = shadow_data_reading(conn, plan)
                restore_seconds = restore_shadow(conn, plan, work_file, jobs, repo.dump_timeout_seconds, shadow_data,
                                                 early_restore)
                tables = _counted_and_proven(conn, plan, work_file, reading, shadow_data)
                swap = swap_into_place(conn, plan.target, plan.shadow, plan.retire_as, plan.backup_id,
                                       keep_old_hours, plan.properties.comment if plan.properties else None,
                                       safety_pending=mode == "replace" and safety_backup)
        except BaseException as exc:
            if shadow_data is not None:
                shadow_data.stop()  # no pg_dump of ours left reading the shadow that is dropped next
            if early is not None:
                early.stop()  # nor the early start's pg_restore writing into it
            dropped = _drop_quietly(conn, plan.shadow) if shadow_started else True
            if not isinstance(exc, Exception):
                raise
            raise RestoreFailed(f"restore of {plan.backup_id} into {plan.target} stopped: {exc}; "
                                f"{unchanged_line(plan, dropped)}") from exc
        finally:
            if early is not None:
                early.give_up()  # no child left, its work directory gone
            if work_file is not None:
                cleanup_work_file(work_file)

        try:
            check_swapped(conn, swap, len(plan.tables))
        except Exception as exc:
            swap_back(conn, plan.target, swap.retired_as, plan.shadow, plan.target_comment)
            raise RestoreFailed(f"restore of {plan.backup_id}: the swapped-in database did not check out ({exc}); "
                                f"the swap was undone and {unchanged_line(plan)}") from exc

        # The database is back in service: the RTO ends here, before the safety backup.
        rto = time.monotonic() - started - (0.0 if kept else waited)
        copy = swap.retired_as
        wanted = copy is not None and mode == "replace" and safety_backup
        detached = wanted and keep_old and detach_safety_backup  # the caller starts it (tasks/safety.py)
        safety_id = safety_error = None
        if wanted and not detached:
            # Imported only here: a restore without a safety backup never loads the backup flow.
            from pgkeeper.flows.backup import backup as backup_flow

            safety_id, safety_error = back_up_old_copy(
                backup_flow, copy, connection_block=connection_block, host=host, port=port, user=user,
                repository_block=repository_block, backup_dir=backup_dir)
        held = wanted and safety_id is None  # kept, whatever keep_old says, until its backup is listed
        keep_until = None
        if copy and not keep_old and not held:
            drop_database_task(conn, copy)
        elif copy:
            keep_until = datetime.now(UTC) + timedelta(hours=keep_old_hours)

        report = RestoreReport(
            backup_id=plan.backup_id, source=plan.source, target=plan.target, mode=plan.mode, tables=tables,
            objects=plan.objects, restore_seconds=restore_seconds, rto_seconds=rto, waited_seconds=waited,
            terminated_sessions=swap.terminated, old_copy=copy if keep_old or held else None,
            old_copy_keep_until=keep_until, safety_backup_id=safety_id, safety_backup_error=safety_error,
            safety_backup_pending=copy if detached else None,
            confirmation=confirmation_line(confirmation) if confirmation else None,
        )
        report_restore(report)
        mail_restore_done(report)  # only when mail is configured
        return completed(report, restored_line(report))


def _counted_and_proven(conn: PostgresConnection, plan: RestorePlan, work_file: Path,
                        reading: ArchiveReading, shadow_data: DataReading | None = None) -> dict[str, int]:
    """Row counts against the manifest, and the content proof, side by side: both only read the
    shadow, and the proof's pg_dump is the long one, so the counts cost no wall time. Both are
    always waited for (nothing of ours still reads the shadow when the flow drops it), and a count
    that differs is the error named, as when the counts ran first."""
    counting = check_counts.submit(conn, plan.shadow, plan)
    try:
        check_content(conn, plan.shadow, plan, work_file, reading, shadow_data)
    except BaseException as exc:
        counting.wait()
        if isinstance(exc, Exception):
            counting.result()  # raises a count mismatch in place of the content's error
        raise
    return counting.result()


def _suspended_answer(form: type, plan: RestorePlan, kept: dict | None, timeout: int):  # -> RestoreConfirmation
    """The form's answer, waiting suspended: the first execution keeps the plan, schedules the run
    that ends an unanswered wait, and exits here (Prefect's Pause); the execution after the answer
    gets it back from the same call. An answer after the deadline changes nothing."""
    if kept is None:
        keep_plan({"plan": plan.model_dump(mode="json"), "asked_at": datetime.now(UTC).isoformat(),
                   "deadline": (datetime.now(UTC) + timedelta(seconds=timeout)).isoformat()})
        schedule_expiry(timeout, plan.target)
    # The server fails a pause it sees expire (never Cancelled): its expiry comes after ours, which
    # the run scheduled at the deadline enforces (Cancelled, target untouched, a notice).
    answer = suspend_flow_run(wait_for_input=form, timeout=timeout + EXPIRY_GRACE_SECONDS)
    if kept is not None and datetime.now(UTC) > datetime.fromisoformat(kept["deadline"]) + timedelta(seconds=5):
        raise FlowPauseTimeout("answered after the deadline")
    return answer


def _expire(flow_run_id: str, target: str | None, timeout: int) -> State:
    """The run a suspended restore scheduled at its deadline: end it Cancelled if still unanswered."""
    from prefect.input.actions import read_flow_run_input

    from pgkeeper.tasks.confirm import PLAN_KEY

    kept = read_flow_run_input(PLAN_KEY, flow_run_id=flow_run_id)
    unchanged = unchanged_line(RestorePlan.model_validate(kept["plan"])) if kept else f"database {target} is unchanged"
    message = f"no confirmation within {timeout} s: restore cancelled, {unchanged}"
    if not expire_unanswered(flow_run_id, message):
        return Completed(message=f"restore run {flow_run_id} was answered or ended before its deadline")
    get_run_logger().warning("restore run %s: %s", flow_run_id, message)
    mail_restore_not_confirmed(target or "?", message)
    return Completed(message=f"closed the unanswered restore run {flow_run_id}: {message}")


def restored_line(r: RestoreReport) -> str:
    """The run's final message."""
    from pgkeeper.fmt import contents, human_seconds

    old = f"; previous database kept as {r.old_copy}" if r.old_copy else ""
    return (f"restored {r.backup_id} into {r.target}: "
            f"{contents(len(r.tables), r.objects.get('indexes', 0), sum(r.tables.values()))}, "
            f"RTO {human_seconds(r.rto_seconds)}{old}")


def _drop_quietly(conn, name: str) -> bool:  # conn: PostgresConnection
    """Drop the shadow after a failure; False if even that failed (the message will say so)."""
    try:
        drop_database_task(conn, name)
        return True
    except Exception:
        return False

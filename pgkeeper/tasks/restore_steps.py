"""The steps of a restore before and after the swap: plan, fetch, prove, restore, count, report.

Nothing here touches the target database: everything is done to a work file and a shadow
database. Putting the shadow in place is pgkeeper.tasks.swap's job.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper import pgdb, pgtools
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.catalog import list_backups, resolve_backup
from pgkeeper.errors import BadName, IntegrityError, PgkeeperError, RepositoryError
from pgkeeper.fmt import human_bytes, human_seconds
from pgkeeper.manifest import Manifest, StoredFile
from pgkeeper.names import LATEST, check_identifier, parse_backup_ref
from pgkeeper.tasks.pg_restore import materialize_dump, pg_restore_into
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tasks.report import artifact_key
from pgkeeper.tasks.swap import old_copy_name, shadow_name
from pgkeeper.tasks.verify import toc_kinds

PRE_RESTORE_LABEL = "pre-restore"
SYSTEM_DATABASES = {"postgres", "template0", "template1"}


class RestoreFailed(PgkeeperError):
    """A restore stopped; the message says what state the target database is in."""


class RestorePlan(BaseModel):
    """What a restore will do, decided before anything is touched."""

    backup_id: str
    source: str
    location: str
    backup_database: str
    finished_at: datetime
    status: str
    size: int
    raw_size: int | None
    compression: str
    file: StoredFile
    tables: dict[str, int]
    objects: dict[str, int]
    mode: str
    target: str
    target_exists: bool
    target_size: int | None
    shadow: str
    retire_as: str | None

    @property
    def age_seconds(self) -> float:
        return (datetime.now(UTC) - self.finished_at).total_seconds()


class RestoreReport(BaseModel):
    backup_id: str
    source: str
    target: str
    mode: str
    tables: dict[str, int]
    objects: dict[str, int]
    restore_seconds: float
    rto_seconds: float
    waited_seconds: float
    terminated_sessions: int
    old_copy: str | None
    old_copy_keep_until: datetime | None
    safety_backup_id: str | None


def newest_regular_backup(storage, database: str) -> Manifest:  # storage: LocalStorage | S3Storage
    """What `latest` means for a restore: the newest backup that is not a pre-restore safety copy.

    A safety backup holds the data a restore replaced; picking it for the next `latest` would
    quietly undo the restore. It stays restorable by its id.
    """
    candidates = [m for m in list_backups(storage, database, kind="logical") if PRE_RESTORE_LABEL not in m.labels]
    if candidates:
        return candidates[-1]
    return resolve_backup(storage, LATEST, database, kind="logical")  # raises the catalog's own "nothing there" line


def plan_restore(conn: PostgresConnection, repo: BackupRepository, backup: str, source: str,
                 mode: str, target: str | None) -> RestorePlan:
    """Resolve the backup and the target; refuse bad names before anything is read or touched."""
    ref = parse_backup_ref(backup)
    if target is not None:
        check_identifier("target database", target)
    if mode not in ("replace", "new"):
        raise BadName(f"mode {mode!r} is not known: use 'replace' or 'new'")
    storage = repo.storage(source)
    # An explicit id may name a base backup: resolve it anyway, to say to use pitr instead.
    manifest = newest_regular_backup(storage, conn.database) if ref == LATEST else resolve_backup(storage, ref)
    if manifest.kind != "logical":
        raise BadName(f"{manifest.backup_id} is a physical base backup: restore it with `pgkeeper pitr`")
    if len(manifest.files) != 1:
        raise RepositoryError(f"{manifest.backup_id}: expected one dump file, manifest lists {len(manifest.files)}")
    if mode == "new":
        if not target:
            raise BadName("mode 'new' needs the name of the database to create")
    else:
        target = target or manifest.database
        if target in SYSTEM_DATABASES:
            raise BadName(f"refusing to replace the system database {target!r}")
    assert target is not None
    exists = pgdb.database_exists(conn, target)
    if mode == "new" and exists:
        raise BadName(f"database {target!r} already exists: a restore into a new database never touches "
                      "an existing one; choose another name or use replace mode")
    now = datetime.now(UTC)
    return RestorePlan(
        backup_id=manifest.backup_id, source=source, location=storage.describe(),
        backup_database=manifest.database, finished_at=manifest.finished_at, status=manifest.status,
        size=manifest.size, raw_size=manifest.raw_size, compression=manifest.compression,
        file=manifest.files[0], tables=manifest.tables, objects=manifest.objects, mode=mode, target=target,
        target_exists=exists, target_size=pgdb.database_size(conn, target) if exists else None,
        shadow=shadow_name(target, uuid.uuid4().hex[:6]),
        retire_as=old_copy_name(target, now) if exists else None,
    )


@task(name="resolve-restore", cache_policy=NO_CACHE, **RETRYABLE)
def resolve_restore(conn: PostgresConnection, repo: BackupRepository, backup: str, source: str, mode: str,
                    target: str | None) -> RestorePlan:
    """Which backup, into which database, and what is there now."""
    plan = plan_restore(conn, repo, backup, source, mode, target)
    get_run_logger().info("restore %s (%s, %s) from %s into %s (%s)", plan.backup_id, human_bytes(plan.size),
                          plan.status, plan.location, plan.target,
                          f"exists, {human_bytes(plan.target_size)}" if plan.target_exists else "new database")
    return plan


@contextmanager
def restore_slot(target: str, wait_seconds: float = 10) -> Iterator[None]:
    """Never two restores into one database at once (a Prefect global concurrency limit, so it
    holds across processes and workers). A second restore fails fast instead of queueing."""
    from pgkeeper.deployments.limits import limit_name, one_at_a_time

    name = limit_name("restore", target)
    with ExitStack() as stack:
        try:
            stack.enter_context(one_at_a_time(name, timeout_seconds=wait_seconds))
        except TimeoutError:
            raise RestoreFailed(f"another restore into {target} is running (limit {name})") from None
        yield


def work_root() -> Path:
    """Where the decompressed dump goes (PGKEEPER_WORK_DIR, else the system temp directory)."""
    return Path(os.environ.get("PGKEEPER_WORK_DIR") or tempfile.gettempdir())


@task(name="fetch-backup", cache_policy=NO_CACHE, **RETRYABLE)
def fetch_backup(repo: BackupRepository, plan: RestorePlan) -> Path:
    """Decompress the stored dump to a local work file, checking its sha256 on the way."""
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    need = plan.file.raw_size or plan.file.size * 4
    free = shutil.disk_usage(root).free
    if need > free:
        raise RepositoryError(f"not enough space in {root} for the decompressed dump: needs about "
                              f"{human_bytes(need)}, {human_bytes(free)} free (set PGKEEPER_WORK_DIR)")
    workdir = Path(tempfile.mkdtemp(prefix="pgkeeper-restore-", dir=root))
    dest = workdir / f"{plan.backup_id}.dump"
    try:
        with repo.storage(plan.source).open_file(plan.backup_id, plan.file.name) as stream:
            materialize_dump(stream, plan.file, plan.compression, dest, f"{plan.backup_id}/{plan.file.name}")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    get_run_logger().info("fetched %s: checksum matches, %s decompressed", plan.backup_id,
                          human_bytes(dest.stat().st_size))
    return dest


@task(name="check-readable", cache_policy=NO_CACHE)
def check_readable(plan: RestorePlan, work_file: Path) -> dict[str, int]:
    """pg_restore can read the archive's table of contents, and it holds every table counted."""
    try:
        listing = pgtools.run([pgtools.tool("pg_restore"), "--list", str(work_file)], timeout=600)
    except pgtools.ToolFailed as exc:
        raise IntegrityError(f"{plan.backup_id}: pg_restore cannot read it ({exc})") from None
    kinds = dict(toc_kinds(listing))
    found = kinds.get("TABLE DATA", 0)
    if found != len(plan.tables):
        raise IntegrityError(f"{plan.backup_id}: the dump holds {found} tables, its manifest counted "
                             f"{len(plan.tables)}")
    return kinds


def cleanup_work_file(work_file: Path) -> None:
    shutil.rmtree(work_file.parent, ignore_errors=True)


@task(name="restore-shadow", cache_policy=NO_CACHE)
def restore_shadow(conn: PostgresConnection, plan: RestorePlan, work_file: Path, jobs: int,
                   keep_ownership: bool, timeout: float) -> float:
    """Restore into a new shadow database shaped like the target; return pg_restore's seconds.

    Not retried on its own: a half-done shadow is dropped by the flow and the run fails, so an
    operator decides whether to spend another full restore.
    """
    from pgkeeper.tasks.swap import create_shadow

    create_shadow(conn, plan.shadow, like=plan.target if plan.target_exists else None)
    seconds = pg_restore_into(conn, work_file, plan.shadow, jobs=jobs, no_owner=not keep_ownership,
                              timeout=timeout)
    get_run_logger().info("restored %s into shadow database %s in %s", plan.backup_id, plan.shadow,
                          human_seconds(seconds))
    return seconds


@task(name="check-counts", cache_policy=NO_CACHE, **RETRYABLE)
def check_counts(conn: PostgresConnection, database: str, plan: RestorePlan) -> dict[str, int]:
    """Every table has exactly the rows the manifest counted in the dump's snapshot."""
    rows, objects = pgdb.count_database(conn, database)
    diffs = pgdb.count_differences(plan.tables, rows)
    diffs += [f"{k}: expected {v}, found {objects.get(k)}" for k, v in plan.objects.items()
              if objects.get(k) != v]
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise IntegrityError(f"{database} does not match backup {plan.backup_id}: {'; '.join(diffs[:3])}{more}")
    get_run_logger().info("%s: %d tables, %d rows, as the manifest counted", database, len(rows),
                          sum(rows.values()))
    return rows


def unchanged_line(plan: RestorePlan, shadow_dropped: bool = True) -> str:
    """The state the target is in after a failure before the swap: as it was."""
    if plan.target_exists:
        state = f"database {plan.target} is unchanged (as before the restore)"
    else:
        state = f"database {plan.target} was not created"
    if not shadow_dropped:
        state += f"; the shadow database {plan.shadow} could not be dropped: drop it by hand"
    return state


def confirmation_description(plan: RestorePlan, toc: dict[str, int], safety_backup: bool) -> str:
    """The markdown the Prefect UI shows above the confirmation form."""
    target_now = (f"exists, {human_bytes(plan.target_size)}" if plan.target_exists
                  else "does not exist yet (it will be created)")
    rows = sum(plan.tables.values())
    lines = [
        f"# Replace database `{plan.target}` with backup `{plan.backup_id}`?",
        "",
        f"- **Target**: `{plan.target}` ({target_now})",
        f"- **Backup**: `{plan.backup_id}` of `{plan.backup_database}`, from {plan.source} (`{plan.location}`)",
        f"- **Age**: {human_seconds(plan.age_seconds)} (finished {plan.finished_at:%Y-%m-%d %H:%M:%S} UTC)",
        f"- **Size**: {human_bytes(plan.size)} stored, {human_bytes(plan.raw_size)} dump",
        f"- **Contents**: {len(plan.tables)} tables, {rows} rows, {plan.objects.get('indexes', 0)} indexes",
        f"- **Verification**: {plan.status}; checksum and table of contents checked now "
        f"({toc.get('TABLE DATA', 0)} tables readable)",
        "",
        "What happens when you confirm:",
        "",
    ]
    steps = []
    if plan.target_exists and safety_backup:
        steps.append(f"a safety backup of the current `{plan.target}` (label `pre-restore`)")
    steps.append(f"the backup is restored into a new database `{plan.shadow}` and its row counts checked")
    if plan.target_exists:
        steps.append(f"connections to `{plan.target}` are refused and ended, then `{plan.target}` is renamed "
                     f"to `{plan.retire_as}` and the restored copy takes its name (one transaction)")
    else:
        steps.append(f"the restored copy is renamed to `{plan.target}`")
    steps.append("if anything fails before the swap, the current database is left exactly as it is")
    lines += [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    lines += ["", f"To go ahead tick **confirm** and type the database name `{plan.target}`."]
    return "\n".join(lines)


def confirmation_form(plan: RestorePlan, toc: dict[str, int], safety_backup: bool) -> type:
    """The RunInput the paused run waits for, with the description above it."""
    from pgkeeper.tasks.confirm import RestoreConfirmation

    return RestoreConfirmation.with_initial_data(description=confirmation_description(plan, toc, safety_backup))


def refusal(plan: RestorePlan, confirm: bool, typed: str) -> str | None:
    """Why a submitted form does not allow the restore, or None when it does."""
    if not confirm:
        return f"restore of {plan.backup_id} into {plan.target} was not confirmed: {unchanged_line(plan)}"
    if typed.strip() != plan.target:
        return (f"the name typed ({typed.strip()!r}) is not the target database {plan.target!r}: "
                f"restore refused, {unchanged_line(plan)}")
    return None


def summary_markdown(r: RestoreReport) -> str:
    rows = sum(r.tables.values())
    old = (f"`{r.old_copy}` (keep until {r.old_copy_keep_until:%Y-%m-%d %H:%M} UTC, then dropped by the next "
           "restore)" if r.old_copy and r.old_copy_keep_until else (f"`{r.old_copy}`" if r.old_copy else "none"))
    lines = [
        f"# Restore of `{r.target}` from `{r.backup_id}`",
        "",
        f"- **Backup**: `{r.backup_id}` ({r.source})",
        f"- **Target**: `{r.target}` ({'replaced' if r.mode == 'replace' else 'new database'})",
        f"- **Duration (RTO)**: {human_seconds(r.rto_seconds)} (pg_restore {human_seconds(r.restore_seconds)}; "
        f"waiting for confirmation not counted: {human_seconds(r.waited_seconds)})",
        f"- **Tables**: {len(r.tables)} tables, {rows} rows, {r.objects.get('indexes', 0)} indexes; "
        "counts equal the manifest",
        f"- **Sessions ended**: {r.terminated_sessions}",
        f"- **Previous database**: {old}",
        f"- **Safety backup**: {f'`{r.safety_backup_id}`' if r.safety_backup_id else 'none'}",
        "",
        "| Table | Rows |",
        "|---|---:|",
    ]
    lines += [f"| `{t}` | {n} |" for t, n in r.tables.items()]
    return "\n".join(lines)


def report_restore(report: RestoreReport) -> str:
    """The run's summary artifact: backup, target, tables and rows, RTO, where the old copy is.
    Not a task: called in the flow, the artifact belongs to the flow run."""
    create_markdown_artifact(summary_markdown(report), key=artifact_key("restore", report.target),
                             description=f"Restore of {report.target} from {report.backup_id}")
    return report.target

"""The steps of a restore before and after the swap: plan, fetch, prove, restore, count, report.

Nothing here touches the target database: everything is done to a work file and a shadow
database. Putting the shadow in place is pgkeeper.tasks.swap's job.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from pgkeeper import dbprops, load_session, pgdb, pgtools, roles
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.codec import checked_chunks
from pgkeeper.content_check import ArchiveReading, DataReading, prove_content
from pgkeeper.early_shadow import reads_data_beside
from pgkeeper.errors import BadName, IntegrityError, RestoreFailed
from pgkeeper.fmt import contents, human_bytes, human_seconds
from pgkeeper.liveness import remove_claimed_dir
from pgkeeper.manifest import DatabaseProperties, Manifest, StoredFile
from pgkeeper.names import check_identifier, parse_backup_ref
from pgkeeper.pgrestore import pg_restore_into, public_revokes
from pgkeeper.restore_choice import chosen_backup
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.tasks.report import artifact_key
from pgkeeper.tasks.swap import old_copy_name, shadow_name
from pgkeeper.tasks.verify import check_table_count, toc_kinds
from pgkeeper.workfile import materialize_dump, new_work_dir, work_root

if TYPE_CHECKING:
    from pgkeeper.early_restore import EarlyFetch

SYSTEM_DATABASES = {"postgres", "template0", "template1"}


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
    properties: DatabaseProperties | None = None
    owner: str | None = Field(default=None, description="role that will own the restored database")
    keep_ownership: bool = True
    roles_to_create: list[str] = Field(default_factory=list)
    globals_file: StoredFile | None = None
    dump_settings: dict[str, str] = Field(default_factory=dict)
    target_comment: str | None = None
    system_identifier: str | None = None  # the cluster the backup was taken from

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
    safety_backup_pending: str | None = None  # the kept copy whose safety backup the caller starts
    safety_backup_error: str | None = None  # why the safety backup failed (the copy is held)
    confirmation: str | None = None  # how a replace was confirmed (restore_confirmation.py)

    def safety_line(self) -> str:
        """Where the safety backup of the replaced database stands."""
        if self.safety_backup_id:
            return f"safety backup of the replaced database: {self.safety_backup_id}"
        if self.safety_backup_error:
            return (f"the safety backup of the replaced database failed ({self.safety_backup_error}): "
                    f"it is kept as {self.old_copy} until one is listed")
        if self.safety_backup_pending:
            return (f"the safety backup of the replaced database ({self.safety_backup_pending}, kept until it "
                    "is listed) is taken next, as a run of its own")
        return "no safety backup"


def plan_restore(conn: PostgresConnection, repo: BackupRepository, backup: str, source: str,
                 mode: str, target: str | None, keep_ownership: bool = True,
                 create_roles: bool = False, server: str | None = None) -> RestorePlan:
    """Resolve the backup and the target; refuse bad names, missing roles and properties this
    server cannot reproduce before anything is read or touched."""
    parse_backup_ref(backup)  # a bad name is refused before the target's
    if target is not None:
        check_identifier("target database", target)
    if mode not in ("replace", "new"):
        raise BadName(f"mode {mode!r} is not known: use 'replace' or 'new'")
    storage = repo.storage(source)
    manifest = chosen_backup(conn, storage, backup, server)
    if manifest.kind != "logical":
        raise BadName(f"{manifest.backup_id} is a physical base backup: restore it with `pgkeeper pitr`")
    dump_file = manifest.dump_file
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
    props, owner, to_create, target_comment = _check_server(conn, manifest, target if exists else None,
                                                            keep_ownership, create_roles)
    return RestorePlan(
        backup_id=manifest.backup_id, source=source, location=storage.describe(),
        backup_database=manifest.database, finished_at=manifest.finished_at, status=manifest.status,
        size=manifest.size, raw_size=manifest.raw_size, compression=manifest.compression,
        file=dump_file, tables=manifest.tables, objects=manifest.objects, mode=mode, target=target,
        target_exists=exists, target_size=pgdb.database_size(conn, target) if exists else None,
        shadow=shadow_name(target, uuid.uuid4().hex[:6]),
        retire_as=old_copy_name(target, now) if exists else None, system_identifier=manifest.system_identifier,
        properties=props, owner=owner, keep_ownership=keep_ownership, roles_to_create=to_create,
        globals_file=manifest.globals_file, dump_settings=manifest.dump_settings, target_comment=target_comment,
    )


def _check_server(conn: PostgresConnection, manifest: Manifest, existing_target: str | None, keep_ownership: bool,
                  create_roles: bool) -> tuple[DatabaseProperties | None, str | None, list[str], str | None]:
    """What this server lacks for the backup (roles, a tablespace, a locale), refused in one line;
    returns (properties to create with, owner, roles to create, the target's current comment)."""
    where = f"{conn.host}:{conn.port}"
    with pgdb.admin_connection(conn) as c:
        current = dbprops.read_properties(c, existing_target) if existing_target else None
        # A backup made before pgkeeper recorded properties: keep the target's own, as before.
        props = manifest.database_properties or current
        needed = sorted(set(manifest.roles) | ({props.owner} if props else set()))
        missing = roles.missing_roles(c, needed)
        me = c.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
        if missing and create_roles and manifest.globals_file is None:
            raise BadName(f"{manifest.backup_id} holds no roles file (made before pgkeeper kept roles): create "
                          f"{', '.join(missing)} on {where} by hand")
        if missing and not create_roles and keep_ownership:
            raise BadName(f"roles missing on {where}: {', '.join(missing)}; restore with --create-roles to create "
                          "them from the backup, or --no-owner to restore without owners and grants")
        if missing and not create_roles and props and props.owner in missing:
            raise BadName(f"the database owner {props.owner!r} is missing on {where}: restore with --create-roles")
        why = dbprops.unreproducible(c, props) if props else None
        if why:
            raise BadName(f"{manifest.backup_id} cannot be restored as it was on {where}: {why}")
    owner = props.owner if props else me
    return props, owner, missing if create_roles else [], current.comment if current else None


def check_plan(conn: PostgresConnection, plan: RestorePlan, backup: str, source: str, mode: str,
               target: str | None, keep_ownership: bool, create_roles: bool) -> RestorePlan:
    """A plan made before the run (the command line shows it at its prompt, so that the name the
    previous database is kept as is the one confirmed), checked against the run's parameters and
    the server now. Its shadow is dropped on failure and its old-copy name taken: both must be
    names a plan makes for its target, and free."""
    asked = {"backup": backup, "source": source, "mode": mode, "target": target or plan.target,
             "keep_ownership": keep_ownership}
    planned = {"backup": plan.backup_id, "source": plan.source, "mode": plan.mode, "target": plan.target,
               "keep_ownership": plan.keep_ownership}
    differ = [f"{k} {planned[k]!r} (the run says {asked[k]!r})" for k in asked if asked[k] != planned[k]]
    if plan.roles_to_create and not create_roles:
        differ.append(f"roles to create {', '.join(plan.roles_to_create)} (the run does not create roles)")
    if differ:
        raise BadName("the restore plan does not match the run: " + "; ".join(differ))
    check_identifier("target database", plan.target)
    if not _names_made_for_target(plan):
        raise BadName(f"the restore plan's shadow {plan.shadow!r} or old-copy name {plan.retire_as!r} is not one "
                      f"pgkeeper makes for {plan.target!r}")
    if pgdb.database_exists(conn, plan.target) != plan.target_exists:
        now = "exists now" if not plan.target_exists else "no longer exists"
        raise BadName(f"database {plan.target!r} {now}: plan the restore again")
    from pgkeeper.early_restore import started_shadow

    early_shadow = started_shadow()  # made by this command's early start for this plan: ours
    for name in (plan.shadow, plan.retire_as):
        if name and name != early_shadow and pgdb.database_exists(conn, name):
            raise BadName(f"database {name!r} already exists: plan the restore again")
    return plan


def _names_made_for_target(plan: RestorePlan) -> bool:
    """Whether the plan's shadow and old-copy names are the ones plan_restore makes for its target."""
    if plan.shadow != shadow_name(plan.target, plan.shadow[-6:]):
        return False
    if plan.retire_as is None:
        return True
    try:
        when = datetime.strptime(plan.retire_as[-15:], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return False
    return plan.retire_as == old_copy_name(plan.target, when)


@task(name="resolve-restore", cache_policy=NO_CACHE, **RETRYABLE)
def resolve_restore(conn: PostgresConnection, repo: BackupRepository, backup: str, source: str, mode: str,
                    target: str | None, keep_ownership: bool = True, create_roles: bool = False,
                    planned: RestorePlan | None = None, server: str | None = None) -> RestorePlan:
    """Which backup, into which database, and what is there now: `planned` when the caller
    already planned the restore (checked), else planned here."""
    plan = check_plan(conn, planned, backup, source, mode, target, keep_ownership, create_roles) if planned \
        else plan_restore(conn, repo, backup, source, mode, target, keep_ownership, create_roles, server)
    get_run_logger().info("restore %s (%s, %s; cluster %s) from %s into %s (%s)", plan.backup_id,
                          human_bytes(plan.size), plan.status, plan.system_identifier or "?", plan.location,
                          plan.target,
                          f"exists, {human_bytes(plan.target_size)}" if plan.target_exists else "new database")
    return plan


@contextmanager
def restore_slot(target: str, wait_seconds: float = 15, lease: dict[str, Any] | None = None) -> Iterator[None]:
    """Never two restores into one database at once (a Prefect global concurrency limit, so it
    holds across processes and workers). A second restore fails fast instead of queueing.
    `lease`: the slot's lease `pgkeeper restore`'s early start took (EarlyFetch.take_restore)."""
    from pgkeeper.slots import limit_name, one_at_a_time

    name = limit_name("restore", target)
    with ExitStack() as stack:
        try:
            stack.enter_context(one_at_a_time(name, timeout_seconds=wait_seconds, lease=lease))
        except TimeoutError:
            raise RestoreFailed(f"another restore into {target} is running (limit {name})") from None
        yield


@task(name="fetch-backup", cache_policy=NO_CACHE, **RETRYABLE)
def fetch_backup(repo: BackupRepository, plan: RestorePlan, early: EarlyFetch | None = None) -> Path:
    """Decompress the stored dump to a local work file, checking its sha256 on the way.

    With `early` (the fetch `pgkeeper restore` began before this run existed, of this very file,
    early_restore.adopt), its work file is this step's once its child has proven and written it;
    its error is this step's, and a retry fetches anew."""
    logger = get_run_logger()
    if early is not None and early.take_stream(plan.backup_id):
        for gone in early.cleared:
            logger.warning("removed %s, the work directory of a restore that was killed", gone)
        logger.info("fetched before the run (pgkeeper restore's early start): waiting for it")
        try:
            dest = early.work_file()
        except BaseException:
            early.give_up()  # no child, no half-written work file left
            raise
    else:
        workdir, cleared = new_work_dir(work_root(), plan.file)
        for gone in cleared:
            logger.warning("removed %s, the work directory of a restore that was killed", gone)
        dest = workdir / f"{plan.backup_id}.dump"
        try:
            with repo.storage(plan.source).open_plain(plan.backup_id, plan.file) as stream:
                materialize_dump(stream, plan.file, plan.compression, dest, f"{plan.backup_id}/{plan.file.name}")
        except BaseException:
            remove_claimed_dir(workdir)
            raise
    logger.info("fetched %s: checksum matches, %s decompressed", plan.backup_id, human_bytes(dest.stat().st_size))
    return dest


@task(name="check-readable", cache_policy=NO_CACHE)
def check_readable(plan: RestorePlan, work_file: Path) -> dict[str, int]:
    """pg_restore can read the archive's table of contents, and it holds every table counted."""
    try:
        listing = pgtools.run([pgtools.tool("pg_restore"), "--list", str(work_file)], timeout=600)
    except pgtools.ToolFailed as exc:
        raise IntegrityError(f"{plan.backup_id}: pg_restore cannot read it ({exc})") from None
    kinds = dict(toc_kinds(listing))
    check_table_count(kinds, len(plan.tables), plan.backup_id)
    return kinds


def cleanup_work_file(work_file: Path) -> None:
    remove_claimed_dir(work_file.parent)


@task(name="create-roles", cache_policy=NO_CACHE)
def create_roles_task(conn: PostgresConnection, repo: BackupRepository, plan: RestorePlan) -> list[str]:
    """Create the roles the backup needs and this server lacks, from the backup's roles file."""
    if not plan.roles_to_create or plan.globals_file is None:
        return []
    with repo.storage(plan.source).open_plain(plan.backup_id, plan.globals_file) as stream:
        data = bytearray()
        checked_chunks(stream, plan.compression, f"{plan.backup_id}/{plan.globals_file.name}", data.extend)
    defs = roles.ClusterGlobals.from_bytes(bytes(data))
    with pgdb.admin_connection(conn) as c:
        created = roles.create_missing(c, defs, plan.roles_to_create)
    get_run_logger().info("created role(s) %s from %s's roles file", ", ".join(created), plan.backup_id)
    return created


@task(name="create-shadow", cache_policy=NO_CACHE)
def prepare_shadow(conn: PostgresConnection, plan: RestorePlan) -> None:
    """The empty shadow database, shaped as the backup's database was; refused here, before any
    change to the target, when this server cannot (an unknown locale)."""
    from prefect.runtime import flow_run

    from pgkeeper.tasks.swap import create_shadow

    create_shadow(conn, plan.shadow, plan.properties, plan.owner, str(flow_run.id or "") or None)


def shadow_data_reading(conn: PostgresConnection, plan: RestorePlan) -> DataReading | None:
    """The content proof's read of the shadow's data, to be started by restore_shadow as soon as
    the data section is loaded, beside the post-data section; None where it must wait for the
    whole restore as before: no data to compare (an old manifest), a restore without owners (its
    own passes), or database settings that apply_after_restore sets only after pg_restore (a
    database's client_encoding, say, changes what pg_dump writes; the reader connects before)."""
    if not reads_data_beside(plan.dump_settings, plan.keep_ownership, plan.properties):
        return None
    return DataReading(conn, plan.shadow, plan.dump_settings, owners=plan.keep_ownership)


@task(name="restore-shadow", cache_policy=NO_CACHE)
def restore_shadow(conn: PostgresConnection, plan: RestorePlan, work_file: Path, jobs: int, timeout: float,
                   shadow_data: DataReading | None = None, early: EarlyFetch | None = None) -> float:
    """pg_restore into the shadow, then the database's own settings, ACL and connection limit
    (after: a `default_transaction_read_only` or a REVOKE CONNECT would stop pg_restore itself).
    `shadow_data` (shadow_data_reading) is started when pg_restore has loaded the data section,
    where the archive allows it (pgrestore.py); on a failure here it is stopped.
    `early`: the pg_restore `pgkeeper restore`'s early start began into this very shadow
    (EarlyFetch.take_restore): waited for instead of run, its error this step's.

    Not retried on its own: a half-done shadow is dropped by the flow and the run fails, so an
    operator decides whether to spend another full restore.
    """
    try:
        if early is not None:
            get_run_logger().info("restoring into %s since before the run (pgkeeper restore's early start): "
                                  "waiting for it", plan.shadow)
            seconds = early.restored(shadow_data.start if shadow_data else None)
        else:
            seconds = pg_restore_into(conn, work_file, plan.shadow, jobs=jobs, no_owner=not plan.keep_ownership,
                                      role=plan.owner, timeout=timeout, options=load_session.LOAD_SETTINGS,
                                      on_data_loaded=shadow_data.start if shadow_data else None)
        load_session.make_durable(conn, plan.shadow)  # pg_restore committed asynchronously: flushed here
        _after_pg_restore(conn, plan, work_file, seconds)
    except BaseException:
        if shadow_data is not None:
            shadow_data.stop()
        raise
    return seconds


def _after_pg_restore(conn: PostgresConnection, plan: RestorePlan, work_file: Path, seconds: float) -> None:
    logger = get_run_logger()
    if not plan.keep_ownership:
        revokes = public_revokes(work_file)
        with conn.connect(database=plan.shadow, autocommit=True) as c:
            for statement in revokes:
                c.execute(statement.encode())
        logger.info("restored without owners and grants, as %s; %d privilege(s) kept revoked from PUBLIC",
                    plan.owner, len(revokes))
    if plan.properties is not None:
        with pgdb.admin_connection(conn) as c:
            skipped = dbprops.apply_after_restore(c, plan.shadow, plan.properties)
        if skipped:
            logger.warning("not applied (roles missing here): %s", "; ".join(skipped))
    logger.info("restored %s into shadow database %s in %s", plan.backup_id, plan.shadow, human_seconds(seconds))


@task(name="check-counts", cache_policy=NO_CACHE, **RETRYABLE)
def check_counts(conn: PostgresConnection, database: str, plan: RestorePlan) -> dict[str, int]:
    """Every table has exactly the rows the manifest counted in the dump's snapshot."""
    rows, objects = pgdb.count_database(conn, database)
    diffs = pgdb.database_differences(plan.tables, plan.objects, rows, objects)
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise IntegrityError(f"{database} does not match backup {plan.backup_id}: {'; '.join(diffs[:3])}{more}")
    get_run_logger().info("%s: %d tables, %d rows, as the manifest counted", database, len(rows),
                          sum(rows.values()))
    return rows


def start_archive_reading(plan: RestorePlan, work_file: Path) -> ArchiveReading:
    """Start reading the archive's side of the content proof (pg_restore's SQL of it, hashed entry
    by entry) in the background, so it runs during the shadow restore instead of after it; or take
    the entries kept for this stored dump on this host (the work file's checksum is proven by now)."""
    return ArchiveReading(work_file, owners=plan.keep_ownership, kept=plan.file.sha256)


@task(name="check-content", cache_policy=NO_CACHE)
def check_content(conn: PostgresConnection, database: str, plan: RestorePlan, work_file: Path,
                  reading: ArchiveReading | None = None, shadow_data: DataReading | None = None) -> list[str]:
    """The shadow holds the backup's schema, grants and data (pg_dump of it equals the archive,
    entry by entry) and the database's properties; a difference fails naming what differs.
    `reading`: the archive's side, started earlier by start_archive_reading (else read here);
    `shadow_data`: the shadow's data side, if restore_shadow started it (else read here)."""
    diffs = prove_content(conn, database, work_file, plan.properties, plan.dump_settings,
                          owners=plan.keep_ownership, reading=reading, data_reading=shadow_data)
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise IntegrityError(f"{database} does not match backup {plan.backup_id}: {'; '.join(diffs[:3])}{more}")
    kept = " (the archive's side as read on this host before: archive_digests.py)" \
        if reading is not None and reading.reused else ""
    get_run_logger().info("%s: schema, grants, data and database properties equal the backup's%s", database, kept)
    return diffs


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
        f"- **Contents**: {contents(len(plan.tables), plan.objects.get('indexes', 0), rows)}",
        f"- **Verification**: {plan.status}; checksum and table of contents checked now "
        f"({toc.get('TABLE DATA', 0)} tables readable)",
        "",
        "What happens when you confirm:",
        "",
    ]
    steps = [f"the backup is restored into a new database `{plan.shadow}` and its row counts checked"]
    if plan.target_exists:
        steps.append(f"connections to `{plan.target}` are refused and ended, then `{plan.target}` is renamed "
                     f"to `{plan.retire_as}` and the restored copy takes its name (one transaction)")
        if safety_backup:
            steps.append(f"`{plan.retire_as}`, exactly what was replaced, is backed up (label `pre-restore`, "
                         f"listed under `{plan.target}`); it is never dropped before that backup is listed")
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
        f"- **Tables**: {contents(len(r.tables), r.objects.get('indexes', 0), rows)}; "
        "counts, schema, grants, data and properties equal the backup",
        f"- **Sessions ended**: {r.terminated_sessions}",
        f"- **Previous database**: {old}",
        f"- **Safety backup**: {f'`{r.safety_backup_id}`' if r.safety_backup_id else r.safety_line()}",
        *([f"- **Confirmation**: {r.confirmation}"] if r.confirmation else []),
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

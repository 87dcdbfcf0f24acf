"""The PITR drill's own steps: is the archive whole, is the recovered copy sound, how long did
it take (RTO) and how much would be lost (RPO); recorded in the base backup's manifest.

The recovery itself reuses the pitr tasks (tasks/recovery.py); only checks and bookkeeping live here.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel

from pgkeeper import pgtools
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.errors import DrillFailed, IntegrityError, PgkeeperError
from pgkeeper.fmt import first_line, human_seconds
from pgkeeper.localcluster import LocalCluster
from pgkeeper.manifest import Manifest, Verification
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.wal.config import WalConfig

METHOD = "pitr-drill"
# A table is implausible when it holds less than this share of the rows the base backup's
# statistics showed (reltuples; tables never analysed are only checked for being there).
PLAUSIBLE_SHARE = 0.5


class DrillReport(BaseModel):
    backup_id: str
    system_identifier: str | None
    data_dir: str
    port: int
    rto_seconds: float | None = None  # start of the drill to a queryable server
    recovered_to: datetime | None = None  # the last replayed transaction's commit time
    rpo_seconds: float | None = None  # the source's clock at the end minus recovered_to
    timeline: int | None = None
    checks: dict[str, str] = {}
    ok: bool = False


@task(name="drill-continuity", cache_policy=NO_CACHE, **RETRYABLE)
def drill_continuity(walcfg: WalConfig, manifest: Manifest) -> str:
    """The chosen backup's WAL from its start to the newest segment, with no gap (else: fail
    naming the segment, before spending time on a recovery that would stop there)."""
    from pgkeeper.tasks.wal_continuity import archive_continuity

    report = archive_continuity(walcfg, [manifest])
    b = report.backups[0]
    if not b.ok:
        raise DrillFailed(f"WAL segment {b.missing[0]} is missing from the archive: base backup {manifest.backup_id} "
                          f"cannot be recovered past it ({b.missing_count} segment(s) missing)")
    get_run_logger().info("archive continuous for %s", b.describe())
    return f"PASS {b.describe()}"


def _recovered(conn: PostgresConnection, port: int, database: str | None = None) -> PostgresConnection:
    return conn.model_copy(update={"host": "127.0.0.1", "port": port, "database": database or conn.database})


@task(name="drill-checks", cache_policy=NO_CACHE)
def drill_checks(conn: PostgresConnection, report: DrillReport, manifest: Manifest, started: float) -> DrillReport:
    """Connect (that instant is the RTO), pg_amcheck every database where amcheck can be
    created, and the base backup's tables present with plausible row counts."""
    logger = get_run_logger()
    copy = _recovered(conn, report.port, manifest.database)
    deadline = time.monotonic() + 120
    while True:
        try:
            with copy.connect() as c:
                c.execute("SELECT 1")
                databases = [r[0] for r in c.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1").fetchall()]
            break
        except PgkeeperError:
            if time.monotonic() > deadline:
                raise DrillFailed(f"the recovered server on port {report.port} does not accept connections") from None
            time.sleep(0.2)
    report.rto_seconds = time.monotonic() - started
    report.checks["connects"] = f"PASS queryable after {human_seconds(report.rto_seconds)}"

    checked = []
    for db in databases:
        try:
            with _recovered(conn, report.port, db).connect(autocommit=True) as c:
                c.execute("CREATE EXTENSION IF NOT EXISTS amcheck")  # the copy is scratch: ours to change
            checked.append(db)
        except (PgkeeperError, psycopg.Error) as exc:
            logger.info("amcheck cannot be created in %s (%s): not checked", db, first_line(exc))
    if checked:
        env = copy.libpq_env()
        argv = [pgtools.tool("pg_amcheck"), "-h", "127.0.0.1", "-p", str(report.port), "-U", conn.user,
                "--heapallindexed"]
        for db in checked:
            argv += ["-d", db]
        try:
            pgtools.run(argv, env=env, timeout=3600)
        except PgkeeperError as exc:
            report.checks["pg_amcheck"] = f"FAIL {exc}"
            raise DrillFailed(f"pg_amcheck found corruption in the recovered copy of {manifest.backup_id}: {exc}") \
                from None
        report.checks["pg_amcheck"] = f"PASS {len(checked)} database(s): {', '.join(checked)}"
    else:
        report.checks["pg_amcheck"] = "SKIP amcheck cannot be created"

    expected = manifest.tables
    implausible = []
    with copy.connect() as c:
        for name, estimate in sorted(expected.items()):
            schema, _, table = name.partition(".")
            try:
                n = c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]  # type: ignore[index]
            except psycopg.Error as exc:
                c.rollback()
                implausible.append(f"{name}: {first_line(exc)}")
                continue
            if estimate > 0 and n < estimate * PLAUSIBLE_SHARE:
                implausible.append(f"{name}: {n} rows, the base backup showed about {estimate}")
    if implausible:
        report.checks["row counts"] = f"FAIL {'; '.join(implausible)}"
        raise DrillFailed(f"the recovered copy of {manifest.backup_id} is implausible: {'; '.join(implausible)}")
    report.checks["row counts"] = f"PASS {len(expected)} table(s) of {manifest.database} present and plausible"
    return report


@task(name="source-clock", cache_policy=NO_CACHE)
def source_clock(conn: PostgresConnection) -> datetime:
    """The source server's now() as the drill starts: the moment a disaster would have struck."""
    try:
        with conn.connect() as c:
            return c.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    except PgkeeperError as exc:
        get_run_logger().warning("source server unreachable (%s): RPO against this machine's clock", exc)
        return datetime.now(UTC)


@task(name="drill-rpo", cache_policy=NO_CACHE)
def measure_rpo(report: DrillReport, source_now: datetime) -> DrillReport:
    """RPO achieved: the source's clock when the drill started minus the last replayed
    transaction's time (how much a loss of the source at that moment would have cost)."""
    if report.recovered_to is not None:
        report.rpo_seconds = max((source_now - report.recovered_to).total_seconds(), 0.0)
        report.checks["rpo"] = (f"PASS last transaction {report.recovered_to.isoformat(sep=' ', timespec='seconds')}, "
                                f"{human_seconds(report.rpo_seconds)} before the source's clock at the start")
    else:
        report.checks["rpo"] = "SKIP no transaction replayed after the base backup"
    return report


@task(name="record-drill", cache_policy=NO_CACHE, **RETRYABLE)
def record_drill(repo: BackupRepository, source: str, report: DrillReport) -> Manifest:
    """Append the drill (RTO, RPO, checks) to the base backup's manifest, in every copy."""
    from pgkeeper.tasks.verify_record import _storages_holding

    v = Verification(at=datetime.now(UTC), method=METHOD, ok=report.ok, restore_seconds=report.rto_seconds,
                     rpo_seconds=report.rpo_seconds, recovered_to=report.recovered_to, checks=report.checks)
    updated = None
    for storage in _storages_holding(repo, source, report.backup_id):
        data = storage.read_manifest(report.backup_id)
        if data is None:
            continue
        m = Manifest.from_bytes(data)
        m.verifications.append(v)
        storage.write_manifest(report.backup_id, m.to_bytes())
        updated = updated or m
    if updated is None:
        raise IntegrityError(f"base backup {report.backup_id} disappeared during the drill")
    return updated


def drill_markdown(r: DrillReport) -> str:
    def t(x: datetime | None) -> str:
        return x.isoformat(sep=" ", timespec="seconds") if x else "-"

    lines = ["# PITR drill: " + ("passed" if r.ok else "FAILED"), "",
             f"- **Cluster**: {r.system_identifier or '-'}", f"- **Base backup**: `{r.backup_id}`",
             f"- **RTO (to a queryable server)**: {human_seconds(r.rto_seconds) if r.rto_seconds else '-'}",
             f"- **Recovered to (last transaction)**: {t(r.recovered_to)}",
             f"- **RPO achieved**: {human_seconds(r.rpo_seconds) if r.rpo_seconds is not None else '-'}"]
    lines += [f"- {k}: {v}" for k, v in r.checks.items()]
    return "\n".join(lines)


@task(name="report-drill")
def report_drill(report: DrillReport) -> None:
    from prefect.artifacts import create_markdown_artifact

    from pgkeeper.tasks.report import artifact_key

    create_markdown_artifact(drill_markdown(report), key=artifact_key("pitr-drill"),
                             description=f"PITR drill of {report.backup_id}")


def remove_scratch(data_dir: Path) -> None:
    """Stop the recovered server (if it got that far) and remove its directory."""
    LocalCluster(data_dir).stop("immediate")
    shutil.rmtree(data_dir.parent, ignore_errors=True)

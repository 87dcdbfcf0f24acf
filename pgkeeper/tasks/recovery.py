"""Point-in-time recovery, step by step: choose a base backup, unpack it, tell PostgreSQL where
the WAL is and where to stop, start it, wait until it has promoted itself, say where it got to.

The recovered server runs as the postgres OS user (when we are root) on its own port, and
fetches WAL with `pgkeeper wal-fetch` (spool first, then S3). Archiving is switched off in
it unless asked for: a copy recovered beside a running original must not push its new
timeline into the original's archive.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pgkeeper import pgtools
from pgkeeper.base_unpack import unpack_cluster
from pgkeeper.blocks.repository import BackupRepository
from pgkeeper.errors import BadName, RecoveryFailed
from pgkeeper.manifest import Manifest
from pgkeeper.recovery_choice import RecoveryTarget, newest_before, physical_backups
from pgkeeper.storage.atomic import atomic_write_bytes
from pgkeeper.tasks.policy import RETRYABLE
from pgkeeper.wal import config as walconfig
from pgkeeper.wal import identity
from pgkeeper.wal.command import conf_quote, pgkeeper_command, probe_in_background, restore_command
from pgkeeper.wal.naming import segment_name
from pgkeeper.wal.setup import server_ids

WAL_CONFIG_NAME = "pgkeeper-wal.json"
FETCH_QUEUE_NAME = "wal-queue"
LOG_NAME = "log/pgkeeper-pitr.log"


class RecoveryResult(BaseModel):
    data_dir: str
    port: int
    backup_id: str
    system_identifier: str | None = None  # the cluster recovered
    target: str
    timeline: int | None
    reached: str  # what PostgreSQL said about where it stopped
    last_transaction_at: datetime | None
    seconds: float


@task(name="resolve-source", cache_policy=NO_CACHE)
def resolve_source(repo: BackupRepository, source: str) -> str:
    """'auto': the local repository if it holds a base backup, else the offsite bucket."""
    if source in ("local", "s3"):
        return source
    if source != "auto":
        raise BadName(f"unknown source {source!r}: use 'local', 's3' or 'auto'")
    return "local" if physical_backups(repo.storage("local")) or not repo.offsite else "s3"


@task(name="archive-cluster", cache_policy=NO_CACHE, **RETRYABLE)
def archive_cluster(walcfg: walconfig.WalConfig, system_identifier: str | None = None) -> str | None:
    """The cluster to recover: the one named, else the one the WAL archive belongs to (its
    archive.json in the spool, else in the bucket), else None (decided from the backups)."""
    if system_identifier:
        return str(system_identifier)
    found = identity.load(walcfg.spool)
    if found is None and walcfg.s3 is not None:
        from pgkeeper.wal.s3 import S3WalStore

        data = S3WalStore(walcfg.s3).read_identity()
        if data is not None:
            found = identity.ArchiveIdentity.from_json(data, walcfg.s3.describe_wal())
    return found.system_identifier if found else None


@task(name="choose-base-backup", cache_policy=NO_CACHE)
def choose_base_backup(repo: BackupRepository, source: str, target: RecoveryTarget,
                       system_identifier: str | None = None) -> Manifest:
    """The newest base backup of the cluster that was consistent before the target."""
    where = repo.storage(source).describe()
    chosen, cluster = newest_before(physical_backups(repo.storage(source)), target, system_identifier, where)
    get_run_logger().info("recovering cluster %s from base backup %s (%s, WAL from %s) to %s", cluster,
                          chosen.backup_id, where, chosen.start_lsn, target.describe())
    return chosen


@task(name="restore-base-backup", cache_policy=NO_CACHE)
def restore_base_backup(repo: BackupRepository, source: str, manifest: Manifest, data_dir: str) -> str:
    """Unpack the base backup into a new (or empty) data directory, every file checksum-checked
    (or take the unpack `pgkeeper pitr` began before this run existed, when it chose the same)."""
    from pgkeeper.early_pitr import adopt

    dest = Path(data_dir)
    early = adopt(repo, source, manifest.backup_id, dest)
    if early is not None:  # it started the server-user probe too
        get_run_logger().info("base backup %s: unpacking began before the run (pgkeeper pitr's early start); "
                              "waiting for it", manifest.backup_id)
        early.result()
    else:
        probe_in_background()  # how the server user runs pgkeeper, meanwhile: configure_recovery needs it next
        unpack_cluster(repo.storage(source), manifest, dest)
    get_run_logger().info("base backup %s unpacked into %s", manifest.backup_id, dest)
    return str(dest)


def syncfs_reports_errors() -> bool:
    """Whether syncfs(2) reports write errors: Linux 5.8 and later (earlier ones only log them)."""
    if not sys.platform.startswith("linux"):
        return False
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (5, 8)


def start_options(data_dir: Path, port: int) -> str:
    """The server's options for this start only (nothing is written into its configuration).

    A base backup starts like a crashed server: PostgreSQL first syncs the whole data directory,
    by default opening and fsyncing every file. restore_base_backup has just synced it all
    (sync_cluster_dir), so with `recovery_init_sync_method = syncfs` (PostgreSQL 14+) the server
    makes the same guarantee with one call per file system instead of a walk of every file. Only
    where syncfs reports errors, so the guarantee is the same as the default's."""
    options = f"-p {port}"
    try:
        major = int((data_dir / "PG_VERSION").read_text().strip().split(".")[0])
    except (OSError, ValueError):
        major = 0
    if major >= 14 and syncfs_reports_errors():
        options += " -c recovery_init_sync_method=syncfs"
    return options


@task(name="configure-recovery", cache_policy=NO_CACHE)
def configure_recovery(data_dir: str, walcfg: walconfig.WalConfig, target: RecoveryTarget, port: int,
                       keep_archiving: bool = False) -> str:
    """recovery.signal plus restore_command and the target in postgresql.auto.conf.

    restore_command's settings go beside the data directory, never into it (a base backup of the
    recovered cluster would carry them along): the WAL config, a 0600 credentials file with the
    restore-side S3 key, and the private key that decrypts WAL; forget_recovery_secrets() removes
    them once the server is promoted."""
    dest = Path(data_dir)
    secrets_dir = recovery_secrets_dir(data_dir)
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    ids = server_ids()
    if ids is not None:
        os.chown(secrets_dir, *ids)
    identities = walcfg.identities() or _repository_identities()
    identity_file = None
    if identities:
        identity_file = secrets_dir / "identities.txt"
        atomic_write_bytes(identity_file, ("\n".join(identities) + "\n").encode(), mode=0o600)
        if ids is not None:
            os.chown(identity_file, *ids)
    # wal-fetch's prefetch queue (wal/prefetch.py) lives here too: beside the data directory, never
    # taken for WAL, bounded to fetch_ahead segments, and removed with the rest after promotion.
    server_cfg = walconfig.WalConfig(spool=walcfg.spool, s3=walcfg.s3.read_only() if walcfg.s3 else None,
                                     compression_level=walcfg.compression_level,
                                     identity_file=str(identity_file) if identity_file else None,
                                     fetch_ahead=walcfg.fetch_ahead or walconfig.DEFAULT_FETCH_AHEAD,
                                     fetch_queue=str(secrets_dir / FETCH_QUEUE_NAME))
    cfg_path = walconfig.write(secrets_dir / WAL_CONFIG_NAME, server_cfg, ids,
                               credentials_file=secrets_dir / "s3-credentials.json")
    command = restore_command(cfg_path, fetch_queue=server_cfg.fetch_queue)  # queue hits taken in the shell
    settings = {"port": str(port), "restore_command": conf_quote(command), **target.settings()}
    if not keep_archiving:
        settings["archive_mode"] = "'off'"
    with open(dest / "postgresql.auto.conf", "a") as f:
        f.write("\n# pgkeeper pitr: recovery settings\n")
        for k, v in settings.items():
            f.write(f"{k} = {v}\n")
    signal = dest / "recovery.signal"
    signal.write_text("")
    if ids is not None:
        os.chown(signal, *ids)
    get_run_logger().info("restore_command = %s; target: %s", command, target.describe())
    return command


def recovery_secrets_dir(data_dir: str) -> Path:
    dest = Path(data_dir)
    return dest.parent / f".{dest.name}.pgkeeper-recovery"


def _repository_identities() -> list[str]:
    from pgkeeper import keys

    return keys.identities()


@task(name="forget-recovery-secrets", cache_policy=NO_CACHE)
def forget_recovery_secrets(data_dir: str) -> None:
    """Remove restore_command's credentials and keys, and wal-fetch's prefetch queue: the
    promoted server needs them no more."""
    remove_recovery_dir(recovery_secrets_dir(data_dir))


def remove_recovery_dir(path: Path) -> None:
    """Renamed first, then removed: a prefetcher still at work writes by the old path, so it
    can neither recreate the queue nor leave a file behind in the directory being removed."""
    if not path.exists():
        return
    gone = path.with_name(f"{path.name}.removing-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        path.rename(gone)
    except OSError:
        gone = path
    for _ in range(5):
        shutil.rmtree(gone, ignore_errors=True)
        if not gone.exists():
            return
        time.sleep(0.2)


def _log_lines(data_dir: Path) -> list[str]:
    try:
        return (data_dir / LOG_NAME).read_text(errors="replace").splitlines()
    except OSError:
        return []


def _explain_failure(data_dir: Path, target: RecoveryTarget) -> str:
    lines = _log_lines(data_dir)
    fatal = [ln for ln in lines if "FATAL" in ln or "PANIC" in ln]
    last_xact = [ln for ln in lines if "last completed transaction was at log time" in ln]
    reached = f" (WAL replayed up to a transaction at {last_xact[-1].split('log time')[-1].strip()})" \
        if last_xact else ""
    if any("recovery ended before configured recovery target was reached" in ln for ln in fatal):
        return f"the target {target.describe()} is past the last archived WAL{reached}: nothing was promoted"
    if any("before consistent recovery point" in ln for ln in fatal):
        return f"the target {target.describe()} is before the base backup became consistent"
    detail = fatal[-1].split("FATAL:")[-1].strip() if fatal else (lines[-1] if lines else "no log")
    # restore_command's own one-line reason, when it gave one, says more than PostgreSQL's summary.
    fetch_errors = [ln.strip() for ln in lines if "wal-fetch: error:" in ln]
    why = f"; {fetch_errors[-1]}" if fetch_errors else ""
    return f"recovery failed: {detail}{why} (see {data_dir / LOG_NAME})"


def start_prefetching(data_dir: str, manifest: Manifest) -> subprocess.Popen | None:
    """Start wal-fetch's prefetcher at the backup's first WAL segment, as the server user (the
    queue is its), as the server starts: replay then finds its first segments queued instead of
    waiting for each call to fetch one and for the prefetcher to start. Returns the starting
    process (it exits once the prefetcher is detached) for prefetch_started() to wait on. Best
    effort: without it, the first wal-fetch call starts the prefetcher as before (a lock lets
    only one prefetcher run, whichever starts it)."""
    import shlex

    from pgkeeper.wal.archive import segments_between
    from pgkeeper.wal.prefetch import position

    cfg = recovery_secrets_dir(data_dir) / WAL_CONFIG_NAME
    if not (manifest.start_lsn and cfg.exists()):
        return None
    size = manifest.wal_segment_size or 16 * 1024 * 1024
    first = segments_between(manifest.start_lsn, manifest.start_lsn, manifest.timeline or 1, size)[0]
    tli, segno = position(first, size)
    if segno == 0:
        return None
    argv = [*pgtools.as_server_user(), *shlex.split(pgkeeper_command()), "wal-fetch", "--config", str(cfg),
            "--prefetch-after", segment_name(tli, segno - 1, size), str(size)]
    try:
        # In the data directory, as PostgreSQL runs restore_command: the prefetcher watches its
        # recovery.signal and stops when recovery ends, whoever started it and whatever became of pitr.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                cwd=data_dir)
    except OSError as exc:
        get_run_logger().warning("not fetching WAL ahead before the start: %s", exc)
        return None


def prefetch_started(proc: subprocess.Popen | None) -> None:
    """Wait for start_prefetching's process (never left running) and say if it failed."""
    if proc is None:
        return
    try:
        _, err = proc.communicate(timeout=120)
        why = pgtools.last_line(err) if proc.returncode != 0 else None
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        why = "wal-fetch --prefetch-after did not finish within 120 s"
    if why:
        get_run_logger().warning("not fetching WAL ahead before the start: %s", why)


@task(name="start-recovery", cache_policy=NO_CACHE)
def start_recovery(data_dir: str, port: int, target: RecoveryTarget, timeout_seconds: int = 3600,
                   manifest: Manifest | None = None) -> None:
    """Start PostgreSQL on the recovered directory; it replays WAL from the archive (with
    `manifest`, the prefetcher is already fetching the backup's WAL: start_prefetching)."""
    dest = Path(data_dir)
    log = dest / LOG_NAME
    log.touch()
    ids = server_ids()
    if ids is not None:
        os.chown(log, *ids)
    # The prefetcher starts beside the server (whose start-up sync comes before its first WAL request).
    prefetching = start_prefetching(data_dir, manifest) if manifest is not None else None
    try:
        r = subprocess.run([*pgtools.as_server_user(), pgtools.tool("pg_ctl"), "-D", str(dest), "-l", str(log),
                            "-o", start_options(dest, port), "-w", "-t", str(timeout_seconds), "start"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_seconds + 30)
    finally:
        prefetch_started(prefetching)
    if r.returncode != 0:
        raise RecoveryFailed(_explain_failure(dest, target))


def _control_state(data_dir: Path) -> tuple[str, int | None]:
    out = pgtools.run([pgtools.tool("pg_controldata"), str(data_dir)], env={"LC_ALL": "C"})
    state = re.search(r"Database cluster state:\s*(.+)", out)
    tli = re.search(r"Latest checkpoint's TimeLineID:\s*(\d+)", out)
    return (state.group(1).strip() if state else "unknown"), (int(tli.group(1)) if tli else None)


def _running(data_dir: Path) -> bool:
    r = subprocess.run([*pgtools.as_server_user(), pgtools.tool("pg_ctl"), "-D", str(data_dir), "status"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


@task(name="wait-for-promotion", cache_policy=NO_CACHE)
def wait_for_promotion(data_dir: str, port: int, backup_id: str, target: RecoveryTarget,
                       started: float, timeout_seconds: int = 3600) -> RecoveryResult:
    """Wait until recovery ended and the server promoted itself; report the point reached.

    Promotion is read from the control file (pg_controldata run in the C locale), not from the
    server's log, which is written in its own lc_messages: "in production" is the state the
    server sets as pg_is_in_recovery() turns false, after its end-of-recovery checkpoint, which
    is on the new timeline. A query would need credentials for the copy, which the pitr flow
    does not have. The log only adds where recovery stopped, when it is in English.
    """
    dest = Path(data_dir)
    deadline = time.monotonic() + timeout_seconds
    polls = 0
    while True:
        state, timeline = _control_state(dest)
        if state == "in production":
            break
        # The control file every 0.2 s (pg_controldata reads 8 kB: the promotion is seen soon after
        # it happens); whether the server still runs (pg_ctl through runuser) every second.
        if polls % 5 == 0 and not _running(dest):
            state, timeline = _control_state(dest)  # it may have promoted and stopped since
            if state == "in production":
                break
            raise RecoveryFailed(_explain_failure(dest, target))
        if time.monotonic() > deadline:
            raise RecoveryFailed(f"recovery did not finish within {timeout_seconds} s; the server is still "
                                 f"running in {dest} (see {dest / LOG_NAME})")
        polls += 1
        time.sleep(0.2)
    lines = _log_lines(dest)
    stop = [ln for ln in lines if "recovery stopping" in ln]
    last = [ln for ln in lines if "last completed transaction was at log time" in ln]
    last_at = None
    if last:
        stamp = last[-1].split("log time", 1)[1].strip()
        try:
            last_at = datetime.fromisoformat(stamp.replace(" ", "T", 1))
        except ValueError:
            last_at = None
    reached = (stop[-1].split("LOG:", 1)[-1].strip() if stop else
               "end of the archived WAL") + (f"; last transaction at {last_at}" if last_at else "")
    result = RecoveryResult(data_dir=str(dest), port=port, backup_id=backup_id, target=target.describe(),
                            timeline=timeline, reached=reached, last_transaction_at=last_at,
                            seconds=time.monotonic() - started)
    get_run_logger().info("recovered cluster in %s on port %d, promoted on timeline %s: %s", dest, port,
                          timeline, reached)
    return result


@task(name="report-recovery")
def report_recovery(result: RecoveryResult) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact("\n".join([
        "# Point-in-time recovery", "",
        f"- **Data directory**: `{result.data_dir}` (port {result.port})",
        f"- **Cluster**: {result.system_identifier or '-'}",
        f"- **Base backup**: `{result.backup_id}`",
        f"- **Target**: {result.target}",
        f"- **Reached**: {result.reached}",
        f"- **New timeline**: {result.timeline}",
        f"- **Duration**: {result.seconds:.1f} s",
    ]), key="pitr", description=f"Recovery to {result.target}")

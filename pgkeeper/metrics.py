"""`pgkeeper metrics`: a Prometheus endpoint computed from the repository and pg_stat_archiver.

The repository is the catalog, so the figures come from the manifests themselves (local
directory or S3, through the repository's storage driver) and the endpoint keeps answering
when the Prefect server is down. Nothing on the scrape path imports Prefect: the storage
object and the connection are built once at start-up, each scrape only lists and reads.

Names follow pgbackrest_exporter's (`pgbackrest_backup_since_last_completion_seconds`,
`..._last_size_bytes`, `..._last_repo_size_bytes`, `..._last_duration_seconds`), with the
`pgkeeper_` prefix and a `database` label where pgBackRest has `stanza`. The README lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pgkeeper.catalog import list_backups
from pgkeeper.manifest import Manifest

ARCHIVER_SQL = ("SELECT current_setting('archive_mode'), archived_count, last_archived_time, failed_count, "
                "last_failed_time, now() FROM pg_stat_archiver")


@dataclass
class Archiver:
    archive_mode: str
    archived_count: int
    last_archived_time: datetime | None
    failed_count: int
    last_failed_time: datetime | None
    now: datetime


def read_archiver(connect: Callable[[], Any]) -> Archiver:
    """pg_stat_archiver through `connect()` (a psycopg connection as a context manager)."""
    with connect() as c:
        return Archiver(*c.execute(ARCHIVER_SQL).fetchone())


@dataclass
class WalWindow:
    """What the WAL archive allows for the newest base backup: recoverable from..to, any gap."""

    earliest: datetime | None
    latest: datetime | None
    gap: bool


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class RepositoryCollector(Collector):
    """Collects on every scrape: the repository's backups, the archiver, the WAL archive."""

    def __init__(self, storage: Any, database: str | None = None, archiver: Callable[[], Archiver] | None = None,
                 wal: Callable[[list[Manifest]], WalWindow] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.storage, self.database, self.archiver, self.wal, self.clock = storage, database, archiver, wal, clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        up = _gauge("pgkeeper_repository_up", "1 if the repository could be listed on this scrape", ["repository"])
        try:
            backups = list_backups(self.storage)
            up.add_metric([self.storage.describe()], 1)
        except Exception:  # an unreachable bucket is a scrape result, not a crash
            backups = []
            up.add_metric([self.storage.describe()], 0)
        yield up
        yield from self._backups(backups, now)
        if self.archiver is not None:
            yield from self._archiver(now)
        if self.wal is not None:
            yield from self._wal(backups, now)

    def _backups(self, backups: list[Manifest], now: datetime) -> Iterator[GaugeMetricFamily]:
        dk = ["database", "kind"]
        since = _gauge("pgkeeper_backup_since_last_completion_seconds",
                       "Seconds since the newest complete backup finished", dk)
        size = _gauge("pgkeeper_backup_last_size_bytes", "Raw (uncompressed) size of the newest backup", dk)
        repo_size = _gauge("pgkeeper_backup_last_repo_size_bytes", "Stored size of the newest backup", dk)
        duration = _gauge("pgkeeper_backup_last_duration_seconds", "How long the newest backup took", dk)
        db_size = _gauge("pgkeeper_backup_last_database_size_bytes", "pg_database_size at the newest backup", dk)
        count = _gauge("pgkeeper_backup_count", "Complete backups kept in the repository", dk)
        repo_total = _gauge("pgkeeper_backup_repo_size_bytes", "Stored size of all kept backups", dk)
        verified = _gauge("pgkeeper_backup_since_last_verification_seconds",
                          "Seconds since the newest passed verification of any kept backup", ["database", "method"])
        status = _gauge("pgkeeper_backup_last_verification_ok",
                        "1 if the newest backup's last verification passed, 0 if it failed (absent: never checked)",
                        dk)
        rto = _gauge("pgkeeper_backup_rto_seconds", "Measured RTO: the newest passed restore drill's seconds",
                     ["database"])
        groups: dict[tuple[str, str], list[Manifest]] = {}
        for m in backups:
            groups.setdefault((m.database, m.kind), []).append(m)
        last_ok: dict[tuple[str, str], datetime] = {}
        rtos: dict[str, tuple[datetime, float]] = {}
        for (db, kind), ms in sorted(groups.items()):
            newest, labels = ms[-1], [db, kind]
            since.add_metric(labels, max(newest.age_seconds(now), 0.0))
            if newest.raw_size is not None:
                size.add_metric(labels, newest.raw_size)
            repo_size.add_metric(labels, newest.size)
            duration.add_metric(labels, newest.duration_seconds)
            if newest.database_size is not None:
                db_size.add_metric(labels, newest.database_size)
            count.add_metric(labels, len(ms))
            repo_total.add_metric(labels, sum(m.size for m in ms))
            if newest.verifications:
                status.add_metric(labels, 1 if newest.verifications[-1].ok else 0)
            for m in ms:
                for v in m.verifications:
                    if v.ok:
                        key = (db, "restore" if v.method in ("restore", "pitr-drill") else v.method)
                        last_ok[key] = max(last_ok.get(key, v.at), v.at)
                        if v.restore_seconds is not None and (db not in rtos or v.at >= rtos[db][0]):
                            rtos[db] = (v.at, v.restore_seconds)
        for (db, method), at in sorted(last_ok.items()):
            verified.add_metric([db, method], max((now - at).total_seconds(), 0.0))
        for db, (_, seconds) in sorted(rtos.items()):
            rto.add_metric([db], seconds)
        yield from (since, size, repo_size, duration, db_size, count, repo_total, verified, status, rto)

    def _archiver(self, now: datetime) -> Iterator[GaugeMetricFamily]:
        labels = ["database"]
        up = _gauge("pgkeeper_archiver_up", "1 if pg_stat_archiver could be read on this scrape", labels)
        db = self.database or ""
        try:
            a = self.archiver()  # type: ignore[misc]
        except Exception:
            up.add_metric([db], 0)
            yield up
            return
        up.add_metric([db], 1)
        yield up
        on = _gauge("pgkeeper_wal_archive_enabled", "1 if archive_mode is on (or always)", labels)
        on.add_metric([db], 1 if a.archive_mode in ("on", "always") else 0)
        lag = _gauge("pgkeeper_wal_archive_lag_seconds", "Seconds since PostgreSQL last archived a WAL segment",
                     labels)
        if a.last_archived_time is not None:
            lag.add_metric([db], max((a.now - a.last_archived_time).total_seconds(), 0.0))
        archived = _gauge("pgkeeper_wal_archived_count", "pg_stat_archiver.archived_count", labels)
        archived.add_metric([db], a.archived_count)
        failed = _gauge("pgkeeper_wal_archive_failed_count", "pg_stat_archiver.failed_count", labels)
        failed.add_metric([db], a.failed_count)
        failing = _gauge("pgkeeper_wal_archive_status",
                         "1 if the last archive attempt failed (pgbackrest_wal_archive_status: 0 is fine)", labels)
        failing.add_metric([db], 1 if a.last_failed_time and (
            a.last_archived_time is None or a.last_failed_time > a.last_archived_time) else 0)
        yield from (on, lag, archived, failed, failing)

    def _wal(self, backups: list[Manifest], now: datetime) -> Iterator[GaugeMetricFamily]:
        physical = [m for m in backups if m.kind == "physical" and m.start_lsn]
        if not physical:
            return
        db = self.database or physical[-1].database
        try:
            w = self.wal(physical)  # type: ignore[misc]
        except Exception:
            return
        window = _gauge("pgkeeper_recoverability_window_seconds",
                        "Seconds of history point-in-time recovery can reach: oldest recoverable point to the "
                        "newest archived WAL", ["database"])
        if w.earliest and w.latest:
            window.add_metric([db], max((w.latest - w.earliest).total_seconds(), 0.0))
        gap = _gauge("pgkeeper_wal_archive_gap", "1 if a segment a kept base backup needs is missing", ["database"])
        gap.add_metric([db], 1 if w.gap else 0)
        yield from (window, gap)


def window_from(physical: list[Manifest], archived: Any, histories: dict[int, str]) -> WalWindow:
    """The continuity walk (pgkeeper.wal.continuity) summed up: oldest recoverable point, newest
    archived WAL time, and whether any kept base backup misses a segment."""
    from pgkeeper.wal.continuity import check
    from pgkeeper.wal.naming import DEFAULT_SEGMENT_SIZE

    sizes = {m.wal_segment_size for m in physical if m.wal_segment_size}
    report = check([(m.backup_id, m.start_lsn, m.timeline or 1, m.finished_at) for m in physical],
                   archived, histories, sizes.pop() if len(sizes) == 1 else DEFAULT_SEGMENT_SIZE)
    earliest = latest = None
    for b in report.backups:
        for w in b.windows:
            if w.earliest and (earliest is None or w.earliest < earliest):
                earliest = w.earliest
            if w.latest and (latest is None or w.latest > latest):
                latest = w.latest
    return WalWindow(earliest, latest, not report.ok)


def wal_window(spool: str, s3_store: Any | None = None) -> Callable[[list[Manifest]], WalWindow]:
    """Per scrape: the spool's view of the archive (plus the S3 archive, when given)."""
    from pgkeeper.wal.view import add_s3, local_view

    def compute(physical: list[Manifest]) -> WalWindow:
        view = local_view(spool)
        if s3_store is not None:
            add_s3(view, s3_store)
        return window_from(physical, view.archived, view.histories)

    return compute


def serve(collector: RepositoryCollector, port: int, addr: str = "127.0.0.1") -> Any:
    """Serve /metrics on addr:port in a background thread; the server (call .shutdown() to stop)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server

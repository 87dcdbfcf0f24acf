"""The weekly report: the week at a glance, from the repository alone (pure: no I/O here).

What the old scripts promised ("Weekly backup report email") and what someone on call reads on
Monday: anything that needs attention first, then every database's backups of the week against
the previous week, verifications with their measured RTO, restores performed, the WAL archive and
how far back recovery reaches, what retention did per tier, and storage per place, tier and class
with its monthly cost at the configured prices. tasks/weekly_report.py gathers the facts and
sends it; the same text is the run's markdown artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pgkeeper.fmt import human_bytes, human_seconds
from pgkeeper.manifest import Manifest

GB = 1024**3  # S3 bills "GB" as 2^30 bytes
ANOMALY = 0.5  # a week whose mean backup size moved by more than this fraction is flagged


@dataclass
class DatabaseWeek:
    database: str
    kind: str
    count: int
    previous_count: int
    size: int  # stored bytes of this week's backups
    previous_size: int
    mean_duration: float | None
    max_duration: float | None
    ratio: float | None  # mean raw/stored of the week
    newest: str | None

    @property
    def trend(self) -> float | None:
        """Change of the mean backup size against the previous week (0.1 = 10% bigger)."""
        if not self.count or not self.previous_count or not self.previous_size:
            return None
        return (self.size / self.count) / (self.previous_size / self.previous_count) - 1


@dataclass
class WeekFacts:
    """What the task gathered; every field plain data."""

    now: datetime
    manifests: dict[str, list[Manifest]]  # place ("local", "s3") -> complete backups there
    restores: list[dict[str, Any]] = field(default_factory=list)  # the restore log's records
    retention: list[dict[str, Any]] = field(default_factory=list)  # tasks.retention.record_retention's records
    wal: dict[str, Any] = field(default_factory=dict)  # segments, newest, recoverable_from/to, gaps
    free_space: tuple[int, int] | None = None  # (free, total) of the local repository's disk
    min_free_fraction: float = 0.2
    default_class: str = "STANDARD"
    prices: dict[str, float] = field(default_factory=dict)  # class (or LOCAL) -> USD per GB-month
    failed_runs: list[str] = field(default_factory=list)  # "flow/run name: state" of the week
    days: int = 7


@dataclass
class WeeklyReport:
    start: datetime
    end: datetime
    attention: list[str]
    databases: list[DatabaseWeek]
    verifications: list[tuple[str, str, datetime, str, bool, float | None]]  # id, db, at, method, ok, RTO s
    restores: list[dict[str, Any]]
    wal: dict[str, Any]
    retention: dict[str, dict[str, int]]  # "removed" -> tier -> count, "moved" -> class -> count
    storage: dict[tuple[str, str, str], int]  # (place, tier, class) -> bytes
    cost: dict[tuple[str, str, str], float]  # same keys -> USD per month

    @property
    def monthly_cost(self) -> float:
        return sum(self.cost.values())


def _in(at: datetime, start: datetime, end: datetime) -> bool:
    return start <= at < end


def build(f: WeekFacts) -> WeeklyReport:
    end = f.now
    start = end - timedelta(days=f.days)
    previous = start - timedelta(days=f.days)
    # One backup may be in both places: its figures count once.
    every: dict[str, Manifest] = {}
    for ms in f.manifests.values():
        for m in ms:
            every.setdefault(m.backup_id, m)
    groups: dict[tuple[str, str], list[Manifest]] = {}
    for m in sorted(every.values(), key=lambda m: m.finished_at):
        groups.setdefault((m.database, m.kind), []).append(m)

    attention: list[str] = [f"failed run: {r}" for r in f.failed_runs]
    databases = []
    for (db, kind), ms in sorted(groups.items()):
        week = [m for m in ms if _in(m.finished_at, start, end)]
        prev = [m for m in ms if _in(m.finished_at, previous, start)]
        durations = [m.duration_seconds for m in week]
        ratios = [m.ratio for m in week if m.ratio]
        dw = DatabaseWeek(db, kind, len(week), len(prev), sum(m.size for m in week), sum(m.size for m in prev),
                          sum(durations) / len(durations) if durations else None, max(durations, default=None),
                          sum(ratios) / len(ratios) if ratios else None, week[-1].backup_id if week else None)
        databases.append(dw)
        if not week and prev:
            attention.append(f"no {kind} backup of {db} this week (last: {ms[-1].backup_id})")
        elif week:
            first_day = max(start.date(), ms[0].finished_at.date())
            days_with = {m.finished_at.date() for m in week}
            missing = [first_day + timedelta(days=i) for i in range((end.date() - first_day).days)
                       if first_day + timedelta(days=i) not in days_with]
            if missing:
                attention.append(f"no {kind} backup of {db} on {', '.join(d.isoformat() for d in missing)}")
        if dw.trend is not None and abs(dw.trend) > ANOMALY:
            attention.append(f"{kind} backups of {db} are {dw.trend:+.0%} in size against the previous week")

    verifications = sorted(
        ((m.backup_id, m.database, v.at, v.method, v.ok, v.restore_seconds)
         for m in every.values() for v in m.verifications if _in(v.at, start, end) and v.method != "quick"),
        key=lambda x: x[2])
    attention += [f"verification ({method}) of {db} {bid} FAILED" for bid, db, _at, method, ok, _ in verifications
                  if not ok]
    restores = [r for r in f.restores if _in(_parse(r.get("at")) or previous, start, end)]

    removed: dict[str, int] = {}
    moved: dict[str, int] = {}
    for rec in f.retention:
        if not _in(_parse(rec.get("at")) or previous, start, end):
            continue
        for tier in rec.get("removed", {}).values():
            key = f"{tier or 'untiered'} ({rec.get('source', '?')})"
            removed[key] = removed.get(key, 0) + 1
        for cls in rec.get("moved", {}).values():
            moved[cls] = moved.get(cls, 0) + 1

    storage: dict[tuple[str, str, str], int] = {}
    for place, ms in f.manifests.items():
        for m in ms:
            cls = "LOCAL" if place == "local" else (m.storage_class or f.default_class)
            key = (place, m.tier or "-", cls)
            storage[key] = storage.get(key, 0) + m.size
    cost = {k: v / GB * f.prices.get(k[2], 0.0) for k, v in storage.items()}

    if f.free_space is not None:
        free, total = f.free_space
        if total and free / total < f.min_free_fraction:
            attention.append(f"local disk {free / total:.0%} free ({human_bytes(free)} of {human_bytes(total)}), "
                             f"below {f.min_free_fraction:.0%}")
    attention += [f"WAL: {g}" for g in f.wal.get("gaps", [])]
    if f.wal.get("failing"):
        attention.append(f"WAL archiving: {f.wal['failing']}")
    return WeeklyReport(start, end, attention, databases, verifications, restores, f.wal,
                        {"removed": removed, "moved": moved}, storage, cost)


def _parse(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.0%}"


def subject(r: WeeklyReport) -> str:
    backups = sum(d.count for d in r.databases)
    head = f"{len(r.attention)} item(s) need attention" if r.attention else "all good"
    return f"weekly report {r.start:%Y-%m-%d} to {r.end:%Y-%m-%d}: {backups} backup(s), {head}"


def body(r: WeeklyReport, markdown: bool = False) -> str:
    """The report as text (the mail) or markdown (the artifact): the same lines."""
    h = (lambda t: f"## {t}") if markdown else (lambda t: f"{t}\n{'-' * len(t)}")
    bullet = "- "
    out = [f"# Weekly report {r.start:%Y-%m-%d %H:%M} to {r.end:%Y-%m-%d %H:%M} UTC" if markdown else
           f"Weekly report {r.start:%Y-%m-%d %H:%M} to {r.end:%Y-%m-%d %H:%M} UTC", ""]
    out += [h("Needs attention"), ""]
    out += [bullet + a for a in r.attention] or ["nothing"]
    out += ["", h("Backups of the week"), ""]
    for d in r.databases:
        out.append(f"{bullet}{d.database} ({d.kind}): {d.count} backup(s), {human_bytes(d.size)} "
                   f"(previous week {d.previous_count}, {human_bytes(d.previous_size)}; mean size {_pct(d.trend)}), "
                   f"duration mean {human_seconds(d.mean_duration) if d.mean_duration is not None else '-'} "
                   f"max {human_seconds(d.max_duration) if d.max_duration is not None else '-'}, "
                   f"ratio {f'{d.ratio:.1f}x' if d.ratio else '-'}, newest {d.newest or '-'}")
    out += ["", h("Verifications"), ""]
    out += [f"{bullet}{at:%Y-%m-%d %H:%M} {db} {bid} {method}: {'PASS' if ok else 'FAIL'}"
            + (f", RTO {human_seconds(rto)}" if rto is not None else "")
            for bid, db, at, method, ok, rto in r.verifications] or ["none this week"]
    out += ["", h("Restores performed"), ""]
    out += [f"{bullet}{x.get('at', '?')} {x.get('backup_id', '?')} -> {x.get('target', '?')} "
            f"({x.get('source', '?')}, confirmed by {x.get('how', '?')})" for x in r.restores] or ["none"]
    out += ["", h("WAL archive"), ""]
    w = r.wal
    if w:
        out.append(f"{bullet}segments: {w.get('segments', '?')} (newest {w.get('newest') or '-'})")
        out.append(f"{bullet}recoverable from {w.get('recoverable_from') or '-'} to {w.get('recoverable_to') or '-'}")
    else:
        out.append("no WAL archive (no base backups)")
    out += ["", h("Retention"), ""]
    out += [f"{bullet}removed {n} {tier}" for tier, n in sorted(r.retention["removed"].items())]
    out += [f"{bullet}moved {n} to {cls}" for cls, n in sorted(r.retention["moved"].items())]
    if not r.retention["removed"] and not r.retention["moved"]:
        out.append("nothing removed or moved")
    out += ["", h("Storage and monthly cost"), ""]
    for key in sorted(r.storage):
        place, tier, cls = key
        out.append(f"{bullet}{place} {tier} {cls}: {human_bytes(r.storage[key])}, ${r.cost[key]:.2f}/month")
    out.append(f"{bullet}total: {human_bytes(sum(r.storage.values()))}, ${r.monthly_cost:.2f}/month "
               "at the configured prices")
    return "\n".join(out) + "\n"


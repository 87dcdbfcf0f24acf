"""`pgkeeper list`: the backups in the repository, read from the repository alone."""

from __future__ import annotations

import argparse

from pgkeeper.cli.common import add_repository_args, needs_blocks, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the backups in the repository")
    add_repository_args(p)
    p.add_argument("--database", "-d", help="only backups of this database")
    p.add_argument("--server", help="only backups of this server: host:port, system identifier, server key, "
                                    "or 'unknown' (backups made before ids named their server)")
    p.add_argument("--s3", action="store_true", help="the catalog in the offsite bucket, read from the bucket alone")
    p.set_defaults(func=run)


def open_repository(args: argparse.Namespace):  # -> BackupRepository | PlainRepository
    """The repository from flags/env without Prefect when possible, else from its block."""
    import os

    # The bucket named by S3_BUCKET needs no block (a new machine may have nothing else).
    use_blocks = needs_blocks(args) and not (
        getattr(args, "s3", False) and os.environ.get("S3_BUCKET") and not args.repository_block)
    if not use_blocks:
        # Flags and the old scripts' variables only: a plain repository, no Prefect, no prefect-aws.
        from pgkeeper.repository import repository_from_env

        return repository_from_env(path=args.backup_dir)
    from pgkeeper.local_server import ensure_api

    ensure_api(announce=False)
    from pgkeeper.config import DEFAULT_REPOSITORY_BLOCK, load_repository

    return load_repository(args.repository_block or DEFAULT_REPOSITORY_BLOCK, path=args.backup_dir)


def run(args: argparse.Namespace) -> int:
    from pgkeeper.catalog import list_backups
    from pgkeeper.fmt import human_bytes, human_seconds

    repo = open_repository(args)
    storage = repo.storage("s3" if getattr(args, "s3", False) else "local")
    backups = list_backups(storage, args.database, server=getattr(args, "server", None))
    if not backups:
        print(f"no backups in {storage.describe()}")
        return 0
    windows = recoverability(repo, backups, getattr(args, "s3", False))
    tiers = tier_columns(repo, storage, backups, "s3" if getattr(args, "s3", False) else "local")
    rows = []
    for m in backups:
        drill = m.last_drill
        rows.append([
            m.backup_id, m.finished_at.strftime("%Y-%m-%d %H:%M:%S UTC"), m.server_label, m.database, m.kind,
            human_bytes(m.size), f"{m.ratio:.1f}x" if m.ratio else "-", str(len(m.tables)),
            m.status, human_seconds(m.last_restore_seconds) if m.last_restore_seconds else "-",
            human_seconds(drill.rpo_seconds) if drill and drill.rpo_seconds is not None else "-",
            windows.get(m.backup_id, "-"), *tiers[m.backup_id], ",".join(m.labels) or "-",
        ])
    print_table(["ID", "FINISHED", "SERVER", "DATABASE", "KIND", "SIZE", "RATIO", "TABLES", "STATUS", "RTO", "RPO",
                 "RECOVERABLE TO", "TIER", "CLASS", "READABLE", "LABELS"], rows)
    print(f"{len(backups)} backup(s) in {storage.describe()}")
    return 0


def tier_columns(repo, storage, backups: list, source: str) -> dict[str, tuple[str, str, str]]:  # noqa: ANN001
    """backup id -> (tier, storage class, readable now). The tier and class come from the manifest
    (retention records them; manifests stay in a standard class), else from the tier policy; only
    a backup in an archive class costs a HEAD per file to learn whether a restore made it readable."""
    if source == "local" and not repo.retention_tiers:
        # Local files have no storage class and no tier plan: no need for the retention module
        # (its dataclasses are a tenth of a quick `pgkeeper list`).
        return {m.backup_id: (m.tier or "-", "LOCAL", "yes") for m in backups}
    from pgkeeper.names import backup_id_time
    from pgkeeper.retention import ARCHIVE_CLASSES, BackupRecord, plan_tiers

    planned: dict[str, str] = {}
    if repo.retention_tiers:
        records = [BackupRecord(m.backup_id, backup_id_time(m.backup_id), True, m.status, m.retention_group)
                   for m in backups]
        planned = {d.backup_id: d.tier for d in plan_tiers(records, repo.tier_policy(), source,
                                                           offsite=repo.has_offsite())}
    default = "LOCAL" if source == "local" else (repo.s3_storage_class or "STANDARD").upper()
    out = {}
    for m in backups:
        cls = (m.storage_class or default) if source == "s3" else "LOCAL"
        readable = storage.archive_state(m.backup_id).describe() if cls in ARCHIVE_CLASSES else "yes"
        out[m.backup_id] = (m.tier or planned.get(m.backup_id) or "-", cls, readable)
    return out


def recoverability(repo, backups: list, with_s3: bool) -> dict[str, str]:  # noqa: ANN001
    """Each base backup's recoverability window, from the archive alone (pgkeeper.wal.continuity):
    the local spool and its ledger of shipped WAL; the bucket too with --s3. No Prefect."""
    physical = [m for m in backups if m.kind == "physical" and m.start_lsn]
    if not physical:
        return {}
    from pgkeeper.wal.continuity import check
    from pgkeeper.wal.setup import config_from_repository
    from pgkeeper.wal.view import add_s3, local_view

    cfg = config_from_repository(repo)
    view = local_view(cfg.spool)
    if with_s3 and cfg.s3 is not None:
        from pgkeeper.wal.s3 import S3WalStore

        add_s3(view, S3WalStore(cfg.s3))
    sizes = {m.wal_segment_size for m in physical if m.wal_segment_size}
    report = check([(m.backup_id, m.start_lsn, m.timeline or 1, m.finished_at) for m in physical],
                   view.archived, view.histories, sizes.pop() if len(sizes) == 1 else 16 << 20)
    out = {}
    for b in report.backups:
        last = next((w for w in reversed(b.windows) if w.latest), None)
        reach = f"{last.latest:%Y-%m-%d %H:%M:%S} (tl {last.timeline})" if last and last.latest else "its end"
        out[b.backup_id] = reach if b.ok else f"{reach}; GAP at {b.missing[0]}"
    return out

"""`pgkeeper list`: the backups in the repository, read from the repository alone."""

from __future__ import annotations

import argparse

from pgkeeper.cli.common import add_repository_args, needs_blocks, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the backups in the repository")
    add_repository_args(p)
    p.add_argument("--database", "-d", help="only backups of this database")
    p.add_argument("--s3", action="store_true", help="the catalog in the offsite bucket, read from the bucket alone")
    p.set_defaults(func=run)


def open_repository(args: argparse.Namespace):  # -> BackupRepository
    """The repository from flags/env without Prefect when possible, else from its block."""
    import os

    # The bucket named by S3_BUCKET needs no block (a new machine may have nothing else).
    use_blocks = needs_blocks(args) and not (
        getattr(args, "s3", False) and os.environ.get("S3_BUCKET") and not args.repository_block)
    if use_blocks:
        from pgkeeper.local_server import ensure_api

        ensure_api(announce=False)
    from pgkeeper.config import DEFAULT_REPOSITORY_BLOCK, load_repository

    block = (args.repository_block or DEFAULT_REPOSITORY_BLOCK) if use_blocks else None
    return load_repository(block, path=args.backup_dir)


def run(args: argparse.Namespace) -> int:
    from pgkeeper.catalog import list_backups
    from pgkeeper.fmt import human_bytes, human_seconds

    repo = open_repository(args)
    storage = repo.storage("s3") if getattr(args, "s3", False) else repo.local()
    backups = list_backups(storage, args.database)
    if not backups:
        print(f"no backups in {storage.describe()}")
        return 0
    rows = []
    for m in backups:
        rows.append([
            m.backup_id, m.finished_at.strftime("%Y-%m-%d %H:%M:%S UTC"), m.database, m.kind,
            human_bytes(m.size), f"{m.ratio:.1f}x" if m.ratio else "-", str(len(m.tables)),
            m.status, human_seconds(m.last_restore_seconds) if m.last_restore_seconds else "-",
            ",".join(m.labels) or "-",
        ])
    print_table(["ID", "FINISHED", "DATABASE", "KIND", "SIZE", "RATIO", "TABLES", "STATUS", "RTO", "LABELS"],
                rows)
    print(f"{len(backups)} backup(s) in {storage.describe()}")
    return 0

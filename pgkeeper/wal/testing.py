"""A throwaway cluster that archives through `pgkeeper wal-push`: for tests, benchmarks, demos."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pgkeeper.localcluster import LocalCluster, scratch_dir
from pgkeeper.wal.config import WalConfig
from pgkeeper.wal.setup import archive_settings, write_config


@dataclass
class ArchivingCluster:
    cluster: LocalCluster
    base: Path  # scratch directory the server user can reach
    repo_path: Path  # repository root; the spool is repo_path/wal
    config_path: Path  # the WAL config archive_command reads


@contextmanager
def archiving_cluster(password: str, archive_timeout: str = "1s", cfg: WalConfig | None = None,
                      prefix: str = "pgkeeper-arch-") -> Iterator[ArchivingCluster]:
    """Start a cluster whose archive_command is wal-push into <base>/repo/wal; stop it afterwards."""
    # The config path is known before the cluster exists: it goes into archive_command.
    base = scratch_dir(prefix)
    repo = base / "repo"
    repo.mkdir(mode=0o755)
    config_path = base / "wal.json"
    cfg = cfg or WalConfig(spool=str(repo / "wal"))
    write_config(config_path, cfg)
    cluster = LocalCluster(base / "data", password=password,
                           settings=archive_settings(config_path, archive_timeout, cfg=cfg))
    try:
        cluster.init().start()
        yield ArchivingCluster(cluster, base, repo, config_path)
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)

"""What a server needs for WAL archiving: its settings, a spool it can write, a config file.

Shared by `pgkeeper wal-setup`, the base-backup flow (which refreshes the config file from
the repository block), the tests and the benchmark. No Prefect here.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

from pgkeeper.errors import PgkeeperError
from pgkeeper.wal import config as walconfig
from pgkeeper.wal.command import SERVER_USER, archive_command, conf_quote


def server_ids(user: str = SERVER_USER) -> tuple[int, int] | None:
    """(uid, gid) of the server's OS user when we are root and must hand files to it."""
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def prepare_spool(spool: Path, user: str = SERVER_USER) -> Path:
    """Create the spool so that the server user can write it (archive_command runs as that user)."""
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    ids = server_ids(user)
    if ids is not None:
        os.chown(spool, *ids)
        for d in spool.rglob("*"):
            os.chown(d, *ids)
        # Every parent must be traversable by that user; we do not loosen them ourselves.
        for parent in spool.resolve().parents:
            st = parent.stat()
            if not (st.st_mode & 0o001 or st.st_uid == ids[0] or (st.st_gid == ids[1] and st.st_mode & 0o010)):
                raise PgkeeperError(f"the {user} OS user cannot reach the WAL spool {spool}: "
                                    f"{parent} is not searchable by it (chmod o+x {parent})")
    return spool


def write_config(path: Path, cfg: walconfig.WalConfig, user: str = SERVER_USER) -> Path:
    prepare_spool(Path(cfg.spool), user)
    return walconfig.write(path, cfg, server_ids(user))


def archive_settings(config_path: Path | str, archive_timeout: str = "60s",
                     user: str = SERVER_USER, cfg: walconfig.WalConfig | None = None) -> dict[str, str]:
    """postgresql.conf lines (name -> literal) that archive every WAL file through wal-push
    (claiming pushed-ahead files in the shell first when `cfg`, the config written to
    `config_path`, has push-ahead on)."""
    claim = cfg.spool if cfg is not None and cfg.push_ahead > 0 else None
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": conf_quote(archive_command(config_path, user, claim)),
        "archive_timeout": conf_quote(archive_timeout),
    }


def config_from_repository(repo: Any, previous: walconfig.WalConfig | None = None) -> walconfig.WalConfig:
    """The WAL settings a BackupRepository block implies: its spool (<path>/wal), its offsite
    bucket with the same encryption and storage class as the backups."""
    return walconfig.WalConfig(
        spool=repo.wal_spool(), s3=repo.s3_target(), recipients=repo.recipients(),
        compression_level=previous.compression_level if previous else walconfig.DEFAULT_LEVEL,
        keep_local_seconds=previous.keep_local_seconds if previous else 0.0,
        push_ahead=previous.push_ahead if previous else walconfig.DEFAULT_PUSH_AHEAD)


def refresh_wal_config(repo: Any, config_file: str | None) -> walconfig.WalConfig:
    """The WAL archive `repo` implies; written to `config_file` (what archive_command and
    restore_command read) when one is named, so that wal-push follows changes to the repository."""
    previous = None
    if config_file and Path(config_file).exists():
        previous = walconfig.load(config_file)
    cfg = config_from_repository(repo, previous)
    if config_file:
        write_config(Path(config_file), cfg)
    return cfg


def provide_runtime(user: str = SERVER_USER) -> Path | None:
    """When `user` cannot run this pgkeeper, install a copy it can (pgkeeper.wal.runtime); its path.

    Only as root (otherwise the server runs as us and can run what we run).
    """
    from pgkeeper.wal.command import forget_pgkeeper_command, pgkeeper_command
    from pgkeeper.wal.runtime import install_runtime

    if server_ids(user) is None:
        return None
    try:
        pgkeeper_command(user)
        return None
    except PgkeeperError:
        path = install_runtime()
        forget_pgkeeper_command()
        pgkeeper_command(user)  # raises the one-line reason if even the copy cannot run
        return path

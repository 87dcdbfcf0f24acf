"""The peer a DBA would pick instead of pgkeeper for physical backups and WAL: Debian's pgbackrest.

A benchmark dependency, not a runtime one: `ensure_installed()` installs the Debian package when
the command is missing. `PgBackRest` writes a configuration for one throwaway cluster (its own
repository, spool, lock and log directories under one base directory) and runs commands as the
server's OS user, the way a packaged install runs them.

    peer = PgBackRest(cluster, base)        # cluster: pgkeeper.localcluster.LocalCluster
    peer.prepare_cluster()                  # a socket directory pgbackrest can reach; restarts
    peer.run("stanza-create")
    peer.run("backup", "--type=full")
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgkeeper.localcluster import LocalCluster


def ensure_installed() -> str:
    """The pgbackrest executable, installed from the distribution's package when missing."""
    found = shutil.which("pgbackrest")
    if found:
        return found
    if not shutil.which("apt-get"):
        raise SystemExit("pgbackrest is not installed and apt-get is not available: install pgbackrest to compare")
    print("installing Debian's pgbackrest package (a benchmark dependency)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", "pgbackrest"], env=env, check=False,
                   stdout=subprocess.DEVNULL)
    found = shutil.which("pgbackrest")
    if not found:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "pgbackrest"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        found = shutil.which("pgbackrest")
    if not found:
        raise SystemExit("could not install pgbackrest")
    return found


@dataclass
class PgBackRest:
    cluster: LocalCluster
    base: Path
    stanza: str = "bench"
    process_max: int = 2
    compress_type: str = "zst"
    archive_async: bool = False

    @property
    def config(self) -> Path:
        return self.base / "pgbackrest.conf"

    @property
    def repo(self) -> Path:
        return self.base / "repo"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    def prepare_cluster(self) -> None:
        """Give the cluster a Unix socket (pgbackrest talks to PostgreSQL through it) and write the
        configuration; restarts the cluster if it is running."""
        from pgkeeper import pgtools

        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        for d in ("repo", "socket", "spool", "lock", "log"):
            pgtools.make_server_dir(self.base / d)
        self.cluster.write_conf({"unix_socket_directories": f"'{self.socket_dir}'"})
        self.write_config()
        if self.cluster.is_running():
            self.cluster.stop()
            self.cluster.start()

    def write_config(self) -> None:
        from pgkeeper import pgtools

        lines = [
            "[global]",
            f"repo1-path={self.repo}",
            "repo1-retention-full=100",
            f"process-max={self.process_max}",
            f"compress-type={self.compress_type}",
            "start-fast=y",
            f"spool-path={self.base / 'spool'}",
            f"lock-path={self.base / 'lock'}",
            f"log-path={self.base / 'log'}",
            "log-level-console=warn",
            "log-level-file=off",
            f"archive-async={'y' if self.archive_async else 'n'}",
            "",
            f"[{self.stanza}]",
            f"pg1-path={self.cluster.datadir}",
            f"pg1-port={self.cluster.port}",
            f"pg1-socket-path={self.socket_dir}",
            f"pg1-user={self.cluster.user}",
            "",
        ]
        self.config.write_text("\n".join(lines))
        pgtools.give_to_server_user(self.config)

    def argv(self, *args: str) -> list[str]:
        from pgkeeper import pgtools

        return [*pgtools.as_server_user(), ensure_installed(), f"--config={self.config}",
                f"--stanza={self.stanza}", *args]

    def run(self, *args: str) -> None:
        """Run one pgbackrest command as the server user; raise with its last line on failure."""
        env = {**os.environ, "PGPASSWORD": self.cluster.password}
        r = subprocess.run(self.argv(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        if r.returncode != 0:
            lines = r.stdout.strip().splitlines()
            raise RuntimeError(f"pgbackrest {args[0]} failed ({r.returncode}): {lines[-1] if lines else ''}")

    def archive_command(self) -> str:
        """The archive_command that ships WAL with pgbackrest (async when configured so)."""
        return f"'{ensure_installed()} --config={self.config} --stanza={self.stanza} archive-push %p'"

    def restore_command(self) -> str:
        return f"{ensure_installed()} --config={self.config} --stanza={self.stanza} archive-get %f \"%p\""

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

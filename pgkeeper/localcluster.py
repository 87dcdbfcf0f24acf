"""A throwaway PostgreSQL cluster in a directory: for the demo, the tests and the benchmarks.

PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres` OS
user. It listens on 127.0.0.1 only, and its superuser has a password (scram-sha-256), so the
password path is exercised exactly as in production.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pgkeeper import pgtools
from pgkeeper.pgtools import make_server_dir

_DEFAULT_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "fsync": "on",
    "shared_buffers": "128MB",
    "max_connections": "50",
    "logging_collector": "off",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scratch_dir(prefix: str = "pgkeeper-") -> Path:
    """A new temp directory that the server user may traverse (mkdtemp makes 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class LocalCluster:
    datadir: Path
    port: int = field(default_factory=free_port)
    password: str = "pgkeeper-demo-pw"
    user: str = "postgres"
    settings: dict[str, str] = field(default_factory=dict)
    # For a cluster on a private network (a test's network namespace): the address it listens
    # on, the network its clients come from, and a command to start it under (`ip netns exec NS`).
    listen: str = "127.0.0.1"
    client_network: str | None = None
    wrapper: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.listen

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname} password={self.password}"

    def libpq_env(self, dbname: str = "postgres") -> dict[str, str]:
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGDATABASE": dbname, "PGPASSWORD": self.password}

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self, extra: dict[str, str] | None = None) -> LocalCluster:
        make_server_dir(self.datadir)
        pwfile = self.datadir.parent / f".pw-{self.port}"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        pgtools.give_to_server_user(pwfile)
        try:
            subprocess.run(
                [*pgtools.as_server_user(), pgtools.tool("initdb"), "-D", str(self.datadir), "-U", self.user,
                 "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8",
                 "--no-sync"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            pwfile.unlink(missing_ok=True)
        conf = {**_DEFAULT_SETTINGS, "listen_addresses": f"'{self.listen}'", "port": str(self.port),
                **self.settings, **(extra or {})}
        self.write_conf(conf)
        with open(self.datadir / "pg_hba.conf", "a") as f:
            f.write("host replication all 127.0.0.1/32 scram-sha-256\n")
            if self.client_network:
                f.write(f"host all all {self.client_network} scram-sha-256\n"
                        f"host replication all {self.client_network} scram-sha-256\n")
        return self

    def write_conf(self, settings: dict[str, str]) -> None:
        with open(self.datadir / "postgresql.auto.conf", "a") as f:
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")

    def start(self, timeout: int = 60) -> LocalCluster:
        log = self.datadir.parent / f"postgres-{self.port}.log"
        log.touch()
        pgtools.give_to_server_user(log)
        subprocess.run(
            [*self.wrapper, *pgtools.as_server_user(), pgtools.tool("pg_ctl"), "-D", str(self.datadir), "-l", str(log),
             "-o", f"-p {self.port}", "-w", "-t", str(timeout), "start"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self, mode: str = "fast") -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        subprocess.run(
            [*pgtools.as_server_user(), pgtools.tool("pg_ctl"), "-D", str(self.datadir), "-m", mode,
             "-w", "-t", "60", "stop"],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def is_running(self) -> bool:
        r = subprocess.run([*pgtools.as_server_user(), pgtools.tool("pg_ctl"), "-D", str(self.datadir), "status"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)


@contextmanager
def throwaway_cluster(prefix: str, password: str, settings: dict[str, str] | None = None,
                      ) -> Iterator[tuple[LocalCluster, Path]]:
    """A started cluster in a new scratch directory, and that directory; both gone afterwards."""
    base = scratch_dir(prefix)
    cluster = LocalCluster(base / "data", password=password, settings=settings or {})
    try:
        cluster.init().start()
        yield cluster, base
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)

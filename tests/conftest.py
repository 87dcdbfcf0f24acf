"""The test harness: real PostgreSQL 15 clusters, a real Prefect API, nothing mocked.

Everything a test starts is stopped here, even when the test fails.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

# Before anything imports prefect or pgkeeper's retry policy.
_HOME = Path(tempfile.mkdtemp(prefix="pgkeeper-test-home-"))
# Every temporary file of the session, ours and that of every process we start (Prefect's
# workers leave prefect-workspace-attempt-* and tmp*prefect behind when a test kills them), goes
# here and goes with the session. Sticky and open like /tmp: PostgreSQL's `postgres` user and
# the drills' clusters write here too. xdist's workers inherit it from the controller and nest.
_TMP = Path(tempfile.mkdtemp(prefix="pgkeeper-test-tmp-"))
_TMP.chmod(0o1777)
os.environ["TMPDIR"] = str(_TMP)
tempfile.tempdir = None  # recomputed from TMPDIR: pytest's tmp_path and our scratch dirs land here too
# What the controller and all its workers share (tests/prefect_template.py): the controller's.
os.environ.setdefault("PGKEEPER_TEST_SHARED", str(_TMP))
# At exit, not at unconfigure: registered first, so it runs after prefect_test_harness's own
# atexit clean-up of the database directory it made in here.
atexit.register(shutil.rmtree, _TMP, True)
os.environ.update({
    "PGKEEPER_HOME": str(_HOME / "pgkeeper"),
    "PREFECT_HOME": str(_HOME / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PGKEEPER_TASK_RETRIES": os.environ.get("PGKEEPER_TASK_RETRIES", "1"),
    "PGKEEPER_RETRY_DELAY_SECONDS": "0.2",
    "PREFECT_LOGGING_LEVEL": "INFO",
})
# The tests stop what they start with Ctrl-C (SIGINT to its process group; helpers.stop,
# test_service_e2e's `pgkeeper serve`). A suite started in the background (`pytest ... &` from a
# script) inherits SIGINT ignored, passes that on to every process it starts, and Python then
# never raises KeyboardInterrupt: each stop waited out its grace and killed, and serve's Ctrl-C
# went unheard for the teardown's 240 s. A handler (not an ignore) is reset to the default at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
for var in ("PREFECT_API_URL", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD",
            "POSTGRES_DB", "BACKUP_DIR", "S3_BUCKET", "ENABLE_S3_UPLOAD"):
    os.environ.pop(var, None)

import psycopg  # noqa: E402
import pytest  # noqa: E402
from psycopg import sql  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from pgkeeper.localcluster import LocalCluster, throwaway_cluster  # noqa: E402
from tests.helpers import create_database, drop_database  # noqa: E402

PASSWORD = "t0p-secret-Pw-" + uuid.uuid4().hex[:8]

# The files that take longest, longest first (measured, see the Makefile's `test`). With
# `--dist loadfile` a worker runs a whole file, and the last file to start bounds the run: start
# the long ones first, so the short ones fill in the ends (xdist's own reordering, by the number
# of tests in a file, is switched off for that).
SLOWEST_FIRST = [
    "test_fleet_pool.py", "test_restore_confirmation.py", "test_alerting_e2e.py", "test_service_e2e.py",
    "test_setup.py", "test_verify.py", "test_fidelity.py", "test_secrets_never_leave.py", "test_fleet.py",
    "test_server_auth.py", "test_verify_drill.py", "test_wal_archive_faults.py", "test_notify.py",
    "test_wal_ship.py", "test_restore.py", "test_storage_interface.py", "test_backup.py", "test_s3_offsite.py",
]


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    # Stable: a file's tests keep their order, and the other files theirs.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's home goes, on every process (the xdist controller makes one too)."""
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[str]:
    """A temporary Prefect API for the whole session (SQLite, loopback)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # The harness's server starts in a process of its own and this one mostly waits for it: make
    # the session's PostgreSQL cluster and CRM template meanwhile (`pg`, `crm_template` take them).
    # Removed in `finally`: a harness that fails to start must not leave the cluster running.
    _SESSION_CLUSTER.start()
    try:
        # Generous: the harness counts its start-up in polls, and a loaded 2-core box needs minutes.
        with prefect_test_harness(server_startup_timeout=900):
            from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

            from tests.prefect_template import save_template

            save_template(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())  # migrated: the e2e servers start from it
            url = PREFECT_API_URL.value()
            os.environ["PREFECT_API_URL"] = url  # for the CLI processes tests start
            yield url
    finally:
        _SESSION_CLUSTER.close()  # after every test's teardown: `pg` and `crm_template` only borrow it
    os.environ.pop("PREFECT_API_URL", None)
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def wal_runtime() -> Iterator[Path | None]:
    """What `wal-setup --apply` does for a pgkeeper the postgres OS user cannot run (a checkout in
    a 0700 directory): a copy it can run. Here in a temporary root, removed afterwards; nothing is
    copied when this checkout is already within that user's reach."""
    if os.geteuid() != 0:
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="pgkeeper-wal-runtime-", dir="/var/tmp"))
    root.chmod(0o755)
    os.environ["PGKEEPER_WAL_RUNTIME_ROOT"] = str(root)  # CLI processes the tests start find it too
    try:
        from pgkeeper.wal.setup import provide_runtime

        yield provide_runtime()
    finally:
        os.environ.pop("PGKEEPER_WAL_RUNTIME_ROOT", None)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def backup_key() -> str:
    """The session's encryption key, as `pgkeeper key create` makes it (offsite copies are
    encrypted by default); its public key."""
    from pgkeeper import keys

    _fingerprint, recipient, _copy = keys.create_key(_HOME / "key-copy.txt")
    return recipient


def make_crm_template(cluster: LocalCluster) -> str:
    """The sample CRM database, generated once per session: filling and analysing it costs the
    server 2-3 s, a copy of it ~0.5 s. Closed to connections, so that no session (autovacuum's
    included) ever blocks a copy; named apart from the tests' `crm_` databases."""
    from pgkeeper.sample_crm import create_crm

    name = "pgkeeper_test_template_" + uuid.uuid4().hex[:8]
    create_database(cluster, name)
    create_crm(cluster.conninfo(name), scale=0.3)
    with psycopg.connect(cluster.conninfo(), autocommit=True) as c:
        c.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
    return name


class _SessionCluster:
    """The session's cluster and CRM template, made in a thread while the Prefect harness starts
    (initdb, start and the sample data: ~3 s of waiting on PostgreSQL otherwise taken after the
    harness's 15-30 s). A failure is raised where `pg` or `crm_template` is asked for, so tests
    that need neither are not affected by it."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._thread: threading.Thread | None = None
        self._made: tuple[LocalCluster, str] | None = None
        self._error: BaseException | None = None

    def _make(self) -> None:
        try:
            cluster, _base = self._stack.enter_context(throwaway_cluster("pgkeeper-pg-", PASSWORD))
            self._made = (cluster, make_crm_template(cluster))
        except BaseException as error:  # noqa: BLE001 (raised again in the test's thread)
            self._error = error

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._make, name="session-cluster", daemon=True)
            self._thread.start()

    def get(self) -> tuple[LocalCluster, str]:
        self.start()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._made is not None
        return self._made

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self._stack.close()


_SESSION_CLUSTER = _SessionCluster()


@pytest.fixture(scope="session")
def pg() -> LocalCluster:
    """One real PostgreSQL 15 cluster for the session; tests make their own databases in it.
    Stopped and removed with the session (prefect_api's teardown, which runs after every other)."""
    return _SESSION_CLUSTER.get()[0]


@pytest.fixture(scope="session")
def crm_template(pg: LocalCluster) -> str:
    """The sample CRM database of the session (make_crm_template); its name."""
    return _SESSION_CLUSTER.get()[1]


@pytest.fixture
def crm_db(pg: LocalCluster, crm_template: str) -> Iterator[str]:
    """A fresh sample CRM database (about 3 MB, a copy of the session's template); its name."""
    name = "crm_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg.conninfo(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(crm_template)))
    try:
        yield name
    finally:
        drop_database(pg, name)


@pytest.fixture
def conn(pg: LocalCluster, crm_db: str):  # -> PostgresConnection
    from pgkeeper.blocks.postgres import PostgresConnection

    return PostgresConnection(host=pg.host, port=pg.port, user="postgres",
                              password=SecretStr(pg.password), database=crm_db)


@pytest.fixture
def repo(tmp_path: Path):  # -> BackupRepository
    from pgkeeper.blocks.repository import BackupRepository

    return BackupRepository(path=str(tmp_path / "repo"))


@pytest.fixture
def pg_env(pg: LocalCluster, crm_db: str, tmp_path: Path) -> dict[str, str]:
    """The old scripts' variables, pointing at the test database and a fresh repository."""
    return {"POSTGRES_HOST": pg.host, "POSTGRES_PORT": str(pg.port), "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": pg.password, "POSTGRES_DB": crm_db, "BACKUP_DIR": str(tmp_path / "repo")}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, spoken to over real HTTP (never the in-process mock)."""
    from moto.server import ThreadedMotoServer

    from pgkeeper.localcluster import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new empty bucket on the moto server; its name."""
    import boto3

    name = "pgkeeper-test-" + uuid.uuid4().hex[:10]
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


class _Inbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        from email import message_from_bytes, policy

        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[str, int, list]]:
    """A real SMTP server (aiosmtpd) on loopback: (host, port, received messages)."""
    from aiosmtpd.controller import Controller

    from pgkeeper.localcluster import free_port

    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.hostname, controller.port, inbox.messages
    finally:
        controller.stop()

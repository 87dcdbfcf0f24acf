"""`pgkeeper backup`'s early start: the dump begins while Prefect is still being imported.

Importing Prefect and creating the run take about 3 s of a `pgkeeper backup`, all of it before
the first byte was dumped. When the run is sure to make the same choices as the command line
can make without Prefect, the command takes them first and starts the stream in a child
process, then imports Prefect and creates the run, whose steps adopt what was started:

- the database's backup slot (the same global concurrency limit, taken over the same REST
  endpoints `slots.py` uses, renewed here until the run's `backup_slot` holds the lease);
- preflight (the same checks, `serverinfo.server_facts`, made before the stream starts; its
  warnings are raised by the run's preflight step) and the backup id (claimed by this process,
  which also writes the manifest);
- the dump itself (`dumpstream.dump_in_snapshot` in a forked child that dies with this process;
  its progress and result come back through a pipe to the run's dump step).

It steps aside, and today's path runs, whenever the choice could differ: a connection or
repository block named on the command line or saved under the default names, no BACKUP_DIR or
--backup-dir, an API not configured through the environment, no manifest key in the key
directory, PGKEEPER_EARLY_START=0, or the slot taken by another backup (the run then waits for
it as before). Anything that fails before the stream starts also steps aside: the run meets the
same failure in its own step and reports it. A stream that fails is the run's dump step failing
(its retry dumps anew); a run that does not adopt it (its settings differ) stops it, removes
its folder and gives the slot back. Nothing here imports Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgkeeper.early_api import Api, ApiError, Beside
from pgkeeper.early_lease import SlotLease
from pgkeeper.early_stream import (
    CONNECTION_SLUG,
    REPOSITORY_SLUG,
    ForkedStream,
    Send,
    early_choices,
    same_choice,
    take_pending,
)
from pgkeeper.errors import PgkeeperError
from pgkeeper.slots import LEASE_SECONDS, database_limit_name

if TYPE_CHECKING:
    import argparse

    from pgkeeper.connection import PlainConnection
    from pgkeeper.dumpstream import DumpResult
    from pgkeeper.repository import PlainRepository, RepositoryVerbs
    from pgkeeper.serverinfo import ServerInfo

__all__ = ["CONNECTION_SLUG", "REPOSITORY_SLUG", "EarlyBackup", "adopt", "same_choice", "start_backup"]

# Why this process's start_backup stepped aside, in a few words (None: it did not, or was not
# called). Never shown to users (the run meets the same trouble and says it); read by the tests'
# probe, so that an early start that stepped aside under load says why.
stepped_aside: str | None = None


def _aside(reason: str) -> None:
    global stepped_aside
    stepped_aside = reason


class EarlyBackup(ForkedStream):
    """A backup begun before its run existed: slot lease, preflight answer, claimed id, stream."""

    what = "pg_dump"

    def __init__(self, api: Api, conn: PlainConnection, repo: PlainRepository, lease: dict[str, Any],
                 info: ServerInfo, alerts: list[tuple[str, str, dict[str, Any]]], backup_id: str) -> None:
        super().__init__(conn, repo, backup_id)
        self.api, self.lease, self.info, self.alerts = api, lease, info, alerts
        self._slot: SlotLease | None = None  # kept alive from the fork until the run's slot holds it

    def stream(self, send: Send) -> dict[str, Any]:
        from pgkeeper.dumpstream import dump_in_snapshot

        result = dump_in_snapshot(self.conn, self.repo, self.backup_id, lambda raw: send({"progress": raw}))
        return result.model_dump(mode="json")

    # -- in the run -----------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        return self.info

    def dump_result(self, on_progress: Callable[[int], None]) -> DumpResult:
        """Wait for the child's stream; its progress goes to `on_progress`, its error is raised."""
        from pgkeeper.dumpstream import DumpResult

        return DumpResult.model_validate(self.outcome(lambda message: on_progress(int(message["progress"]))))

    # -- in the command -------------------------------------------------------------------

    def fork_stream(self) -> None:
        """The dump in a child process (ForkedStream), and the slot's lease kept alive meanwhile."""
        super().fork_stream()
        self._slot = SlotLease(self.api, self.lease)

    def hand_over_lease(self) -> dict[str, Any]:
        """The lease, for the run's backup slot (which renews and releases it from now on)."""
        return self._slot.hand_over() if self._slot is not None else self.lease

    def give_up(self) -> None:
        """Undo a start no run adopted: the stream stopped, its folder removed, the slot given back."""
        super().give_up()
        if self._slot is not None:
            self._slot.release()
        else:  # not forked: nothing renews it
            try:
                self.api.release_lease(self.lease["lease_id"])
            except ApiError:
                pass  # it expires within LEASE_SECONDS


def start_backup(args: argparse.Namespace, api_url: str) -> EarlyBackup | None:
    """Begin `pgkeeper backup` before Prefect is imported when the run is sure to choose the same
    connection and repository; None (today's path) otherwise. See the module's docstring."""
    choices = early_choices(args, api_url)
    if choices is None:
        _aside("its choices could differ from the run's, or were not all known")
        return None
    api, conn, repo = choices
    try:
        limit = database_limit_name(conn.database, f"{conn.host}:{conn.port}")
    except (PgkeeperError, ValueError) as exc:
        _aside(f"no slot name: {exc}")
        return None

    def take_slot() -> dict[str, Any] | None:
        api.ensure_limit(limit)
        return api.try_lease(limit, LEASE_SECONDS)

    # The slot's two round trips run beside the preflight's imports and queries (read-only but
    # for the repository's write probe); nothing is claimed or streamed before the slot is held.
    slot = Beside(take_slot)
    lease = None
    backup_id = None
    try:
        from pgkeeper.claim import claim_backup_id
        from pgkeeper.serverinfo import server_facts

        alerts: list[tuple[str, str, dict[str, Any]]] = []
        info = server_facts(conn, repo, lambda kind, message, **details: alerts.append((kind, message, details)))
        lease = slot.result()
        if lease is None:
            _aside("the database's backup slot is held")
            return None  # another backup of this database runs: the run waits for it as before
        backup_id = claim_backup_id(repo.storage(), info.server_time, info.server)
        early = EarlyBackup(api, conn, repo, lease, info, alerts, backup_id)
        early.fork_stream()
    except BaseException as exc:
        if backup_id is not None:
            repo.storage().abandon_backup(backup_id)
        if lease is None:
            try:
                lease = slot.result()  # taken meanwhile by a start that failed: given back below
            except BaseException:  # noqa: BLE001  # the slot's own trouble: nothing was taken
                lease = None
        if lease is not None:
            try:
                api.release_lease(lease["lease_id"])
            except ApiError:
                pass  # it expires within LEASE_SECONDS
        if isinstance(exc, Exception):
            _aside(f"{type(exc).__name__}: {exc}")
            return None  # e.g. no room, the wrong cluster, the API: the run's own steps say so
        raise
    return early


def adopt(conn: Any, repo: RepositoryVerbs) -> EarlyBackup | None:
    """For the backup run: this process's early start when it made the run's choices (then the
    run holds its slot lease from here on), else None; one that does not match is undone."""
    early = take_pending(EarlyBackup)
    if early is None:
        return None
    if not same_choice(early, conn, repo):
        early.give_up()
        return None
    early.adopted = True
    early.hand_over_lease()
    return early


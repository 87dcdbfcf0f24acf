"""`pgkeeper restore`'s early start: the stored dump is fetched while Prefect is still imported.

Importing Prefect and creating the run take about 3 s of a `pgkeeper restore`, and the run's
first step then reads the stored dump, proves its sha256 and decompresses it into a work file
(1-2.5 s of a 1 GB database). When the run is sure to make the same choices as the command line
can make without Prefect (pgkeeper/early_stream.py's `early_choices`: no connection or
repository block named or saved under the default names, a repository from --backup-dir or
BACKUP_DIR, PREFECT_API_URL in the environment, a manifest key in the key directory,
PGKEEPER_EARLY_START not 0), the command finds the backup as the run's plan will
(`restore_choice.chosen_backup`), checks the room for it, makes the work directory (tagged
with this process: `workfile.new_work_dir`, which also removes those of dead restores) and
forks a child that writes the work file (`workfile.materialize_dump`, the same as the
fetch-backup step: the stored bytes' sha256 proven on the way). The child dies with this
process (PR_SET_PDEATHSIG) and sends its result, or its error in one line, through a pipe.

The run's fetch-backup step adopts the work file only when the run's plan takes this very file
(same backup id, same stored file and sha256, same compression) from the same repository into
the same work root, with the same connection (`adopt`); otherwise the child is stopped, its work
directory removed, and the step fetches as it always did. The terminal's confirmation (replace
mode without --yes) is asked while the child runs. It steps aside, and today's path runs, for a
backup read from S3 (--from-s3), an encrypted backup without a private key in the key directory
(the run may take it from a Secret block), a base backup, too little room, or any trouble
before the fork (the run meets it and says so). Nothing is written outside the work directory
before the run, and nothing in the database but the early shadow below. Nothing here imports Prefect.

When the run's plan is sure to make the same shadow database (pgkeeper/early_shadow.py says when:
`--into` a new database, or a replace confirmed with `--yes`), the command also takes the target's
restore slot over REST before the fork, and the child goes on from the work file to create the
shadow and pg_restore into it. The command line's plan takes that shadow's name; the run's
fetch-backup step takes the work file as soon as it is written, and its restore-shadow step waits
for the child's pg_restore (the content proof's readers start when the run gets there: the shadow's
data reader as soon as the child says its data section is in). The run adopts that restore only
when its plan makes exactly that shadow (early_shadow.fits); otherwise the child is stopped, the
shadow dropped, the slot given back, and the run goes on as today.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgkeeper.early_stream import (
    ForkedStream,
    Send,
    early_choices,
    peek_pending,
    same_choice,
    take_pending,
)
from pgkeeper.liveness import remove_claimed_dir

if TYPE_CHECKING:
    import argparse

    from pgkeeper.connection import PlainConnection
    from pgkeeper.early_lease import SlotLease
    from pgkeeper.early_shadow import ShadowSpec
    from pgkeeper.manifest import Manifest
    from pgkeeper.repository import PlainRepository, RepositoryVerbs


class EarlyFetch(ForkedStream):
    """A restore's work file begun before its run existed: the chosen backup's dump, decompressed
    into a work directory of this process's."""

    what = "fetch"

    def __init__(self, conn: PlainConnection, repo: PlainRepository, manifest: Manifest, root: Path,
                 workdir: Path, cleared: list[Path], shadow: ShadowSpec | None = None,
                 slot: SlotLease | None = None) -> None:
        super().__init__(conn, repo, manifest.backup_id)
        self.file, self.compression = manifest.dump_file, manifest.compression
        self.root, self.workdir, self.cleared = root, workdir, cleared
        self.dest = workdir / f"{manifest.backup_id}.dump"
        self.shadow, self.slot = shadow, slot  # the early shadow and its restore slot (early_shadow.py)
        self.command_pid = os.getpid()  # the shadow's tag names the command, which outlives the child
        self.shadow_taken = False  # the run holds the slot and owns the shadow (take_restore)
        self._shadow_undone = False
        self._data_loaded = False
        self._on_data_loaded: Callable[[], None] | None = None

    def stream(self, send: Send) -> dict[str, Any]:
        """In the child: the work file written, its stored bytes proven against the manifest; with
        an early shadow, then the shadow made and restored."""
        from pgkeeper.workfile import materialize_dump

        with self.repo.storage("local").open_plain(self.backup_id, self.file) as source:
            materialize_dump(source, self.file, self.compression, self.dest, f"{self.backup_id}/{self.file.name}")
        if self.shadow is None:
            return {"path": str(self.dest)}
        send({"fetched": str(self.dest)})
        return {"path": str(self.dest), "seconds": self._restore_shadow(self.shadow, send)}

    def _restore_shadow(self, spec: ShadowSpec, send: Send) -> float:
        """In the child: the shadow as prepare_shadow makes it, pg_restore into it as restore_shadow
        runs it (the content proof's data reader, told by a message, starts when the run has it)."""
        # pgkeeper.pgrestore imports no Prefect (its connection type only for type checking); it is
        # where the run's restore-shadow step runs pg_restore, so both run it the same way.
        from pgkeeper.load_session import LOAD_SETTINGS
        from pgkeeper.pgrestore import pg_restore_into
        from pgkeeper.shadowdb import create_shadow

        create_shadow(self.conn, spec.shadow, spec.properties, spec.owner, pid=self.command_pid)
        return pg_restore_into(self.conn, self.dest, spec.shadow, jobs=spec.jobs, no_owner=not spec.keep_ownership,
                               role=spec.owner, timeout=self.repo.dump_timeout_seconds, options=LOAD_SETTINGS,
                               on_data_loaded=(lambda: send({"data_loaded": True})) if spec.reads_beside else None)

    # -- in the run -----------------------------------------------------------------------

    def work_file(self) -> Path:
        """Wait for the child: the proven work file, or its error raised (one line, its kind kept).
        With an early shadow the child goes on restoring it: the file is the run's once written."""
        if self.shadow is None:
            path = Path(self.outcome()["path"])
        else:
            path = Path(self.message_with("fetched", self._message)["fetched"])
        if path != self.dest:
            raise RuntimeError(f"the early fetch wrote {path}, not {self.dest}")
        return path

    def take_restore(self) -> dict[str, Any] | None:
        """For the run's restore slot: the slot's lease when the run adopted the early shadow (the
        run owns the shadow from here on: it drops it on a failure, swaps it in otherwise), else None."""
        if self.shadow is None or self.slot is None or not self.adopted or self._shadow_undone or self.pid is None:
            return None
        self.shadow_taken = True
        return self.slot.hand_over()

    def restored(self, on_data_loaded: Callable[[], None] | None) -> float:
        """Wait for the child's pg_restore into the shadow: its seconds, or its error raised.
        `on_data_loaded` is called once the child said the data section is in (at once if it did)."""
        self._on_data_loaded = on_data_loaded
        if self._data_loaded and on_data_loaded is not None:
            on_data_loaded()
        return float(self.outcome(self._message)["seconds"])

    def _message(self, message: dict[str, Any]) -> None:
        if "data_loaded" in message:
            self._data_loaded = True
            if self._on_data_loaded is not None:
                self._on_data_loaded()

    # -- in the command -------------------------------------------------------------------

    def give_up(self) -> None:
        """The child stopped, the work directory removed, and an early shadow the run did not take
        dropped and its slot given back (nothing else was made). Undone once only: the run may have
        made a shadow of the same name since."""
        self.stop()
        remove_claimed_dir(self.workdir)
        if self.shadow is not None and not self.shadow_taken and not self._shadow_undone:
            self._shadow_undone = True
            from pgkeeper.pgdb import drop_database

            try:
                drop_database(self.conn, self.shadow.shadow)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001  # its tag names this process: the next run drops it
                pass
        if self.slot is not None:
            self.slot.release()  # no-op once handed over

    def finish(self) -> None:
        """At the command's end nothing uses the work file any more: an adopted one has been
        removed by its run already, one no run adopted goes now."""
        self.give_up()


def start_restore(args: argparse.Namespace, api_url: str) -> EarlyFetch | None:
    """Begin fetching the dump `pgkeeper restore` will restore, before Prefect is imported, when
    the run is sure to choose the same; None (today's path) otherwise. See the module's docstring."""
    if args.from_s3 or (args.into and args.target):
        return None
    choices = early_choices(args, api_url)
    if choices is None:
        return None
    api, conn, repo = choices
    workdir = None
    slot = None
    try:
        from pgkeeper import keys
        from pgkeeper.early_lease import SlotLease
        from pgkeeper.early_shadow import shadow_spec
        from pgkeeper.restore_choice import chosen_backup
        from pgkeeper.workfile import new_work_dir, work_root

        manifest = chosen_backup(conn, repo.storage("local"), args.backup, args.server)
        if manifest.kind != "logical":
            return None  # the run's plan says to use pitr
        if manifest.dump_file.encryption and not keys.identities():
            return None  # the run may find the private key in a Secret block
        root = work_root()
        workdir, cleared = new_work_dir(root, manifest.dump_file)
        shadow = shadow_spec(args, conn, manifest)
        slot = SlotLease.take(api, shadow.target) if shadow else None  # held before anything is written
        if slot is not None:
            slot.record(workdir)
        early = EarlyFetch(conn, repo, manifest, root, workdir, cleared, shadow if slot else None, slot)
        early.fork_stream()
    except BaseException as exc:
        if workdir is not None:
            remove_claimed_dir(workdir)
        if slot is not None:
            slot.release()
        if isinstance(exc, Exception):
            return None  # e.g. no such backup, no room: the run's own steps say so
        raise
    return early


def fits(early: EarlyFetch, conn: Any, repo: RepositoryVerbs, plan: Any) -> bool:
    """Whether the run's plan (tasks/restore_steps.RestorePlan) restores what the early fetch
    fetched: the same stored file (id, name, sha256, size) of the same backup, read from the same
    local repository with the same connection, into the same work root."""
    from pgkeeper.workfile import work_root

    return (plan.source == "local" and plan.backup_id == early.backup_id and plan.file == early.file
            and plan.compression == early.compression and work_root() == early.root
            and same_choice(early, conn, repo))


def adopt(conn: Any, repo: RepositoryVerbs, plan: Any, jobs: int | None = None) -> EarlyFetch | None:
    """For the restore run: this process's early fetch when it fetched what the run's plan
    restores (`fits`) and, with an early shadow, makes that shadow with `jobs` pg_restore jobs
    (early_shadow.fits), else None; one that does not fit is undone (child stopped, directory
    gone, shadow dropped, slot given back)."""
    from pgkeeper.early_shadow import fits as shadow_fits

    early = take_pending(EarlyFetch)
    if early is None:
        return None
    if not fits(early, conn, repo, plan) or (
            early.shadow is not None and (jobs is None or not shadow_fits(early.shadow, plan, jobs))):
        early.give_up()
        return None
    early.adopted = True
    return early


def name_shadow(plan: Any) -> Any:
    """For the command line: its plan with the early shadow's name when the plan is otherwise that
    shadow's (early_shadow.named_as_started), so that the run can adopt the restore."""
    from pgkeeper.early_shadow import named_as_started

    early = peek_pending(EarlyFetch)
    return named_as_started(early.shadow, plan) if early is not None and early.shadow is not None else plan


def started_shadow() -> str | None:
    """The shadow this process's early start made (or is making), before the run adopts it: the
    run's check of a given plan finds it existing, and it is ours."""
    early = peek_pending(EarlyFetch)
    return early.shadow.shadow if early is not None and early.shadow is not None else None

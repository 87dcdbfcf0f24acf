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
before the fork (the run meets it and says so). Nothing is written outside the work directory,
and nothing in the database, before the run. Nothing here imports Prefect.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgkeeper.early_stream import ForkedStream, Send, early_choices, same_choice, take_pending

if TYPE_CHECKING:
    import argparse

    from pgkeeper.connection import PlainConnection
    from pgkeeper.manifest import Manifest
    from pgkeeper.repository import PlainRepository, RepositoryVerbs


class EarlyFetch(ForkedStream):
    """A restore's work file begun before its run existed: the chosen backup's dump, decompressed
    into a work directory of this process's."""

    what = "fetch"

    def __init__(self, conn: PlainConnection, repo: PlainRepository, manifest: Manifest, root: Path,
                 workdir: Path, cleared: list[Path]) -> None:
        super().__init__(conn, repo, manifest.backup_id)
        self.file, self.compression = manifest.dump_file, manifest.compression
        self.root, self.workdir, self.cleared = root, workdir, cleared
        self.dest = workdir / f"{manifest.backup_id}.dump"

    def stream(self, send: Send) -> dict[str, Any]:
        """In the child: the work file written, its stored bytes proven against the manifest."""
        from pgkeeper.workfile import materialize_dump

        with self.repo.storage("local").open_plain(self.backup_id, self.file) as source:
            materialize_dump(source, self.file, self.compression, self.dest, f"{self.backup_id}/{self.file.name}")
        return {"path": str(self.dest)}

    # -- in the run -----------------------------------------------------------------------

    def work_file(self) -> Path:
        """Wait for the child: the proven work file, or its error raised (one line, its kind kept)."""
        path = Path(self.outcome()["path"])
        if path != self.dest:
            raise RuntimeError(f"the early fetch wrote {path}, not {self.dest}")
        return path

    # -- in the command -------------------------------------------------------------------

    def give_up(self) -> None:
        """The child stopped and the work directory removed (nothing else was made)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

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
    _, conn, repo = choices
    workdir = None
    try:
        from pgkeeper import keys
        from pgkeeper.restore_choice import chosen_backup
        from pgkeeper.workfile import new_work_dir, work_root

        manifest = chosen_backup(conn, repo.storage("local"), args.backup, args.server)
        if manifest.kind != "logical":
            return None  # the run's plan says to use pitr
        if manifest.dump_file.encryption and not keys.identities():
            return None  # the run may find the private key in a Secret block
        root = work_root()
        workdir, cleared = new_work_dir(root, manifest.dump_file)
        early = EarlyFetch(conn, repo, manifest, root, workdir, cleared)
        early.fork_stream()
    except BaseException as exc:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
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


def adopt(conn: Any, repo: RepositoryVerbs, plan: Any) -> EarlyFetch | None:
    """For the restore run: this process's early fetch when it fetched what the run's plan
    restores (`fits`), else None; one that does not fit is undone (child stopped, directory gone)."""
    early = take_pending(EarlyFetch)
    if early is None:
        return None
    if not fits(early, conn, repo, plan):
        early.give_up()
        return None
    early.adopted = True
    return early

"""`pgkeeper pitr`'s early start: the base backup is unpacked while Prefect is still imported.

The same idea as the backups' early starts (pgkeeper/early.py, early_base.py; what they share is
in pgkeeper/early_stream.py): when the run is sure to choose what the command line can choose
without Prefect (the repository from BACKUP_DIR or --backup-dir, no repository block saved under
the default name, a local base backup, the WAL archive's cluster known from the spool, the
private key of an encrypted backup in the key directory), the command chooses the base backup as
the run's choose-base-backup step does (`recovery_choice.newest_before`) and forks a child that
unpacks it into the data directory (`base_unpack.unpack_cluster`: every stored file checked
against its sha256, the tree owned by the server user and synced). The child dies with this
process (PR_SET_PDEATHSIG; GNU tar dies with the child) and reports its result, or its error in
one line, through a pipe.

The run's restore-base-backup step adopts it when it chose the same backup from the same
repository into the same directory, and waits for it; everything after the unpack (recovery
settings, the server's start, promotion) is the run's, unchanged. When the run chooses anything
else, or never gets that far, the child is stopped and what it unpacked removed (the directory
itself when the command made it). Nothing here imports Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgkeeper.early_stream import ForkedStream, Send, early_repository, take_pending

if TYPE_CHECKING:
    import argparse

    from pgkeeper.manifest import Manifest
    from pgkeeper.repository import PlainRepository, RepositoryVerbs


class EarlyUnpack(ForkedStream):
    """A base backup being unpacked into a data directory before its run existed."""

    what = "unpack"

    def __init__(self, repo: PlainRepository, manifest: Manifest, dest: Path) -> None:
        super().__init__(None, repo, manifest.backup_id)  # type: ignore[arg-type]  # no connection: nothing is dumped
        self.manifest, self.dest = manifest, dest
        self.created = not dest.exists()  # what giving up removes: the directory, or only what is in it

    def stream(self, send: Send) -> dict[str, Any]:
        from pgkeeper.base_unpack import unpack_cluster

        unpack_cluster(self.repo.storage("local"), self.manifest, self.dest)
        return {"data_dir": str(self.dest)}

    def result(self) -> None:
        """Wait for the unpack; its error is raised (one line, its kind kept), and whatever a
        child that did not finish left in the directory is removed first."""
        try:
            self.outcome()
        except BaseException:
            self._remove_unpacked()
            raise

    def give_up(self) -> None:
        """Undo an unpack no run adopted: the child stopped, what it unpacked removed."""
        self.stop()
        self._remove_unpacked()

    def finish(self) -> None:
        """At the command's end: an unpack no run adopted is undone; an adopted one is the run's."""
        if not self.adopted:
            self.give_up()
            return
        self.stop()

    def _remove_unpacked(self) -> None:
        from pgkeeper.base_unpack import remove_unpacked

        remove_unpacked(self.dest, self.created)


def start_unpack(args: argparse.Namespace, api_url: str) -> EarlyUnpack | None:
    """Begin unpacking the base backup `pgkeeper pitr` will recover from, before Prefect is
    imported, when the run is sure to choose the same; None (today's path) otherwise, including
    any trouble choosing: the run meets it and says so."""
    repo = None if args.source == "s3" else early_repository(args, api_url)
    if repo is None:
        return None
    from pgkeeper.base_unpack import check_empty_target
    from pgkeeper.errors import PgkeeperError

    dest = Path(args.data_dir)
    try:
        check_empty_target(dest)  # else the run's step refuses it, in one line
        manifest = _chosen(args, repo)
    except (PgkeeperError, OSError, ValueError):
        return None  # the run meets it and says so
    if manifest is None:
        return None
    early = EarlyUnpack(repo, manifest, dest)
    early.fork_stream()
    from pgkeeper.wal.command import probe_in_background

    probe_in_background()  # after the fork: the run's configure-recovery needs it right after the unpack
    return early


def _chosen(args: argparse.Namespace, repo: PlainRepository) -> Manifest | None:
    """The base backup the run's steps will choose, when the local repository decides it."""
    from pgkeeper import keys
    from pgkeeper.recovery_choice import newest_before, parse_target, physical_backups
    from pgkeeper.wal import config as walconfig
    from pgkeeper.wal import identity
    from pgkeeper.wal.setup import config_from_repository

    local = repo.storage("local")
    backups = physical_backups(local)
    if not backups:
        return None  # 'auto' would read the bucket; 'local' fails in the run
    cluster = args.system_identifier
    if not cluster:
        walcfg = walconfig.load(args.wal_config) if args.wal_config else config_from_repository(repo)
        found = identity.load(walcfg.spool)
        if found is None and walcfg.s3 is not None:
            return None  # the run asks the bucket which cluster the archive is
        cluster = found.system_identifier if found else None
    target = parse_target(args.target_time, args.target_lsn, args.target_name, args.latest)
    chosen = newest_before(backups, target, cluster, local.describe())[0]
    if any(f.encryption for f in chosen.files) and not keys.identities():
        return None  # its private key may be a Secret block: only the run reads those
    return chosen


def adopt(repo: RepositoryVerbs, source: str, backup_id: str, dest: Path) -> EarlyUnpack | None:
    """For the run's restore-base-backup step: this process's early unpack when the run chose the
    same backup, repository and directory, else None; one that does not match is undone."""
    early = take_pending(EarlyUnpack)
    if early is None:
        return None
    if (source != "local" or backup_id != early.backup_id or str(repo.path) != str(early.repo.path)
            or dest.absolute() != early.dest.absolute()):
        early.give_up()
        return None
    early.adopted = True
    return early

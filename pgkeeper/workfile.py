"""A restore's work file: the stored dump decompressed to local disk, its sha256 proven on the way
(pg_restore -j needs a seekable archive), in a work directory of its own.

No Prefect: the restore's fetch-backup step and `pgkeeper restore`'s early fetch
(pgkeeper/early_restore.py) both make it here, the same way. A work directory is tagged with the
process that uses it (liveness.claim_dir); the next restore removes those of dead processes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from pgkeeper.codec import checked_chunks
from pgkeeper.dumpoffsets import add_data_offsets
from pgkeeper.early_lease import release_recorded_lease
from pgkeeper.errors import RepositoryError
from pgkeeper.fmt import human_bytes
from pgkeeper.liveness import claim_dir, clear_dead_dirs
from pgkeeper.manifest import StoredFile

WORK_PREFIX = "pgkeeper-restore-"


def work_root() -> Path:
    """Where the decompressed dump goes (PGKEEPER_WORK_DIR, else the system temp directory)."""
    return Path(os.environ.get("PGKEEPER_WORK_DIR") or tempfile.gettempdir())


def check_room(root: Path, file: StoredFile) -> None:
    """Refuse, in one line, a dump that would not fit decompressed under `root`."""
    need = file.raw_size or file.size * 4
    free = shutil.disk_usage(root).free
    if need > free:
        raise RepositoryError(f"not enough space in {root} for the decompressed dump: needs about "
                              f"{human_bytes(need)}, {human_bytes(free)} free (set PGKEEPER_WORK_DIR)")


def new_work_dir(root: Path, file: StoredFile) -> tuple[Path, list[Path]]:
    """A fresh work directory under `root` with room for `file` decompressed, tagged with this
    process (which must outlive every use of it: a dead tag lets the next restore remove it);
    also the directories of dead restores removed on the way, for the caller to name."""
    root.mkdir(parents=True, exist_ok=True)
    check_room(root, file)
    # A dead restore's directory may record the restore slot's lease its early start held: given back first.
    cleared = clear_dead_dirs(root, WORK_PREFIX, release_recorded_lease)
    workdir = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=root))
    claim_dir(workdir)
    return workdir, cleared


def materialize_dump(source: BinaryIO, file: StoredFile, compression: str, dest: Path, label: str) -> Path:
    """Write the decompressed archive to `dest`, refusing it if its sha256 is not the manifest's;
    then (the stored bytes proven) write its data offsets into its TOC (pgrestore.py)."""
    try:
        with open(dest, "wb") as out:
            dest.chmod(0o600)
            checked_chunks(source, compression, label, out.write)
        add_data_offsets(dest)  # after the proof: an archive it cannot place is left as it is
    except OSError as exc:
        dest.unlink(missing_ok=True)
        raise RepositoryError(f"cannot write work file {dest}: {exc.strerror}") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest

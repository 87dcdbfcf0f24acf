"""`pg_basebackup -Ft -D - -X none` started, as the streamed base backup reads it (basestream.py).

Apart from basestream (which imports pydantic and the manifest models) so that
`pgkeeper base-backup`'s early start can start the tool in its child before those imports and
before the checks: pg_basebackup writes only to its stdout pipe, so nothing reaches the
repository until the stream reads it (pgkeeper/early_base.py)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, NamedTuple

from pgkeeper import pgtools

if TYPE_CHECKING:
    from pgkeeper.connection import ConnectionVerbs
    from pgkeeper.repository import RepositoryVerbs


# backup_manifest's per-file checksums. PostgreSQL's default: CRC32C costs the walsender (one
# process, on the stream's path) and the check on the way in (tarstream.py) a fraction of
# SHA-256's time (docs/performance.md section 2). It guards the transfer; what is stored is
# guarded by the repository manifest's SHA-256 of every stored file, signed.
MANIFEST_CHECKSUMS = "CRC32C"


class Started(NamedTuple):
    tool: pgtools.Child
    stderr: IO[bytes]  # the file the tool's stderr goes to
    at: datetime  # when it was started: the backup's start as the manifest records it


def label_of(backup_id: str) -> str:
    """The backup label PostgreSQL records (backup_label in the tar, the .backup history file)."""
    return f"pgkeeper {backup_id}"


@contextmanager
def started_pg_basebackup(conn: ConnectionVerbs, repo: RepositoryVerbs, label: str) -> Iterator[Started]:
    """pg_basebackup streaming a tar to its stdout (checksums for backup_manifest: CRC32C), with
    the repository's timeout; it never outlives the block (nor its starter: PR_SET_PDEATHSIG)."""
    argv = [pgtools.tool("pg_basebackup"), "-D", "-", "-Ft", "-X", "none", "--checkpoint=fast",
            f"--manifest-checksums={MANIFEST_CHECKSUMS}", "-l", label, "-w"]
    with tempfile.TemporaryFile() as err, pgtools.child(
        argv, env=conn.libpq_env(), timeout=repo.dump_timeout_seconds,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
    ) as pb:
        yield Started(pb, err, datetime.now(UTC))

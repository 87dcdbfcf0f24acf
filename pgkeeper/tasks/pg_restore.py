"""Putting a stored dump back into a database with pg_restore.

The stored file is decompressed (checksum-checked on the same pass) into a local work file,
because pg_restore -j needs a seekable archive.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from pgkeeper import pgtools
from pgkeeper.blocks.postgres import PostgresConnection
from pgkeeper.errors import RepositoryError
from pgkeeper.manifest import StoredFile
from pgkeeper.tasks.checksum import checked_chunks


def materialize_dump(source: BinaryIO, file: StoredFile, compression: str, dest: Path, label: str) -> Path:
    """Write the decompressed archive to `dest`, refusing it if its sha256 is not the manifest's."""
    try:
        with open(dest, "wb") as out:
            dest.chmod(0o600)
            checked_chunks(source, compression, file.sha256, label, out.write)
    except OSError as exc:
        dest.unlink(missing_ok=True)
        raise RepositoryError(f"cannot write work file {dest}: {exc.strerror}") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def pg_restore_into(conn: PostgresConnection, archive: Path, database: str, jobs: int = 2,
                    no_owner: bool = False, role: str | None = None, timeout: float = 6 * 3600) -> float:
    """Restore `archive` into the existing empty `database`; return the seconds it took.

    By default objects get their original owners and GRANTs (the roles must exist). With
    `no_owner`, ownership and GRANTs are left out and everything is created as `role` (the
    database's owner), never silently as the superuser we connect as; revoke_public_defaults()
    then keeps what the backup had revoked from PUBLIC. --exit-on-error: a partial restore is a
    failed restore.
    """
    argv = [pgtools.tool("pg_restore"), "-w", "--exit-on-error", f"--jobs={max(jobs, 1)}",
            f"--dbname={database}"]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
        if role:
            argv.append(f"--role={role}")
    argv.append(str(archive))
    started = time.monotonic()
    with tempfile.TemporaryFile() as err, pgtools.child(
            argv, env=conn.libpq_env(database), timeout=timeout,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err) as proc:
        proc.wait()
        err.seek(0)
        proc.check(err.read(), timeout)
    return time.monotonic() - started


def public_revokes(archive: Path, timeout: float = 600) -> list[str]:
    """The `REVOKE ... FROM PUBLIC` statements of the archive's ACL entries, as pg_restore writes them.

    A restore without privileges would otherwise leave PUBLIC its defaults: EXECUTE on a
    SECURITY DEFINER function the backup had locked down would be open to everyone.
    """
    listing = pgtools.run([pgtools.tool("pg_restore"), "--list", str(archive)], timeout=timeout)
    acl_lines = [ln for ln in listing.splitlines() if ln and not ln.startswith(";") and " ACL " in ln]
    if not acl_lines:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".list") as lst:
        lst.write("\n".join(acl_lines) + "\n")
        lst.flush()
        script = pgtools.run([pgtools.tool("pg_restore"), "-L", lst.name, "-f", "-", str(archive)], timeout=timeout)
    return [ln for ln in script.splitlines() if ln.startswith("REVOKE ") and ln.endswith(" FROM PUBLIC;")]

"""A copy of what `wal-push` / `wal-fetch` need, where the server's OS user can run it.

PostgreSQL runs archive_command and restore_command as its own user (postgres). When
pgkeeper is installed where that user cannot go (a virtualenv in a home directory of mode
0700, a checkout made with `mktemp -d`), `pgkeeper wal-setup --apply` (run as root) copies
the pgkeeper package and the few libraries the WAL commands import into a system directory
owned by root and readable by everyone, named after a digest of their contents, and the
commands run from there with the system's python of the same version. The test harness uses
the same function, so the WAL tests pass from a checkout in any directory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pgkeeper

DEFAULT_ROOT = "/usr/local/lib/pgkeeper"
# What the WAL commands import: zstandard for the spool, pyrage for encrypted WAL, boto3 and its
# dependencies for S3.
PACKAGES = ("pgkeeper", "zstandard", "pyrage", "boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3",
            "six")
COMPLETE = ".complete"


def runtime_root() -> Path:
    return Path(os.environ.get("PGKEEPER_WAL_RUNTIME_ROOT") or DEFAULT_ROOT)


def _sources() -> list[Path]:
    found = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue  # six and dateutil are only needed by some botocore versions
        origin = Path(spec.origin)
        found.append(origin.parent if origin.name == "__init__.py" else origin)
    return found


def _digest() -> str:
    """Changes with pgkeeper's code and the libraries' versions, so a stale copy is never used."""
    h = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    for name in PACKAGES[1:]:
        try:
            h.update(f"{name}={importlib.metadata.version(name)};".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{name}=-;".encode())
    package = Path(pgkeeper.__file__).parent
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def runtime_dir(root: Path | None = None) -> Path:
    return (root or runtime_root()) / f"wal-runtime-{_digest()}"


def installed_runtime(root: Path | None = None) -> Path | None:
    path = runtime_dir(root)
    return path if (path / COMPLETE).exists() else None


def install_runtime(root: Path | None = None) -> Path:
    """Copy the packages into `root` (default /usr/local/lib/pgkeeper); idempotent; return the copy."""
    dest = runtime_dir(root)
    if (dest / COMPLETE).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    try:
        for source in _sources():
            if source.is_dir():
                shutil.copytree(source, tmp / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, tmp / source.name)
        for path in [tmp, *tmp.rglob("*")]:  # readable by the server's user, writable by nobody else
            path.chmod(0o755 if path.is_dir() else 0o644)
        (tmp / COMPLETE).write_text(f"pgkeeper {pgkeeper.__version__} for python {sys.version.split()[0]}\n")
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / COMPLETE).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process installed the same copy meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest

"""A Prefect database already migrated, for the fresh Prefect servers the end-to-end files start.

A server on an empty SQLite database runs Prefect's 116 migrations first: about 11 s of CPU of
the 23 s a start costs here. The session's harness server migrates its own database anyway; a
copy of it taken right after it started (the schema at head and the block types it registered,
nothing else) is what a second start of any server finds. Servers seeded with it run no
migration. Without a template (it is made by whichever xdist worker's harness is up first) a
server migrates its empty database as before: seeding only ever saves work.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

# The xdist controller's temporary directory, inherited by its workers (tests/conftest.py).
SHARED = "PGKEEPER_TEST_SHARED"


def template() -> Path:
    return Path(os.environ[SHARED]) / "prefect-migrated.db"


def save_template(database_url: str) -> None:
    """Keep a consistent copy of the running harness's database (sqlite's online backup)."""
    source = database_url.partition(":///")[2]
    target = template()
    if not source or target.exists():
        return
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    with sqlite3.connect(source) as src, sqlite3.connect(partial) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    os.replace(partial, target)  # whole or absent: another worker may be seeding from it


def seed_prefect_home(prefect_home: Path) -> None:
    """Put the migrated database where a server with this PREFECT_HOME keeps its own
    (`${PREFECT_HOME}/prefect.db`, Prefect's default), unless one is there."""
    if not template().exists() or (prefect_home / "prefect.db").exists():
        return
    _private_dirs(prefect_home)
    shutil.copyfile(template(), prefect_home / "prefect.db")


def seed_pgkeeper_server(pgkeeper_home: Path) -> None:
    """The same for `pgkeeper server start` (pgkeeper.local_server: PGKEEPER_HOME/prefect-server/home)."""
    seed_prefect_home(pgkeeper_home / "prefect-server" / "home")


def _private_dirs(path: Path) -> None:
    """Create the missing directories 0700, as pgkeeper and Prefect create them."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700)

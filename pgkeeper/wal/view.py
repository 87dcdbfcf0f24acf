"""What the archive holds, for the continuity check: names, archive times, timeline histories.

The local view (spool objects, plus the ledger of what was shipped, plus history files, which
wal-ship never removes from the spool) needs neither the network nor Prefect: `pgkeeper list`
uses it. wal-ship and the PITR drill add the S3 listing, the authoritative offsite copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgkeeper.wal.naming import is_history
from pgkeeper.wal.spool import LocalWalStore


class ArchiveView:
    def __init__(self) -> None:
        # WAL file name -> archive time (epoch seconds), or the local file whose mtime it is:
        # stat()ed only for the few segments a window ends at (thousands of stats cost `list` ~0.2 s).
        self.archived: dict[str, float | Path] = {}
        self.histories: dict[int, str] = {}  # timeline -> history file text

    def add(self, name: str, at: float | Path) -> None:
        self.archived.setdefault(name, at)


def local_view(spool: str) -> ArchiveView:
    view = ArchiveView()
    store = LocalWalStore(spool)
    for obj in store.objects():
        view.add(obj.name, obj.path)
        if is_history(obj.name) and int(obj.name[:8], 16) not in view.histories:
            try:
                view.histories[int(obj.name[:8], 16)] = store.read(obj).decode(errors="replace")
            except Exception:  # noqa: BLE001 - an unreadable history shows up as a missing one
                pass
    for name, _sha, entry in store.ledger():
        view.add(name, entry)
    return view


def add_s3(view: ArchiveView, remote: Any) -> ArchiveView:
    """Add an S3WalStore's objects (and any history file the spool does not hold)."""
    from pgkeeper.wal.spool import decompress_checked

    for name, sha, rel, at in list(remote.listing()):
        view.add(name, at)
        if is_history(name) and int(name[:8], 16) not in view.histories:
            view.histories[int(name[:8], 16)] = decompress_checked(remote.get(rel), name, sha).decode(errors="replace")
    return view

"""pgkeeper's own home directory (PGKEEPER_HOME, default ~/.pgkeeper)."""

from __future__ import annotations

import os
from pathlib import Path


def pgkeeper_home() -> Path:
    path = Path(os.environ.get("PGKEEPER_HOME", Path.home() / ".pgkeeper"))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path

"""What keeps a `pgkeeper` command's imports cheap: optional modules it never uses are not
imported, and Prefect is imported without the cyclic garbage collector running.

httpx imports its command-line client (`httpx._main`: rich's progress bars and syntax
highlighting, pygments and its lexers) from `httpx/__init__` inside `try: ... except
ImportError`, falling back to a `main()` that says the CLI extras are missing. Prefect imports
httpx in every command that runs a flow, and nothing in pgkeeper or Prefect calls httpx's CLI:
marking the module absent before httpx is first imported spares each such command about
0.1 s of CPU on its critical path (measured with `python -c "import pgkeeper.flows.backup"`).

Importing the flows (Prefect, pydantic's models) allocates about 200,000 objects that live as
long as the process; the collector, with its default thresholds, runs some 320 times meanwhile
and finds little to free. Without it, then with what was imported frozen (never scanned again),
the import took 0.85-0.91x the time (paired, 20-30 runs each, `import pgkeeper.flows.backup`),
about 0.3 s of a command's start on a 2-core machine, for 2 MB of memory.
Nothing here imports anything but the standard library.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Imported by an optional fallback only (see the module's docstring); never used by a command.
UNUSED_BY_COMMANDS = ("httpx._main",)


def skip_unused_imports() -> None:
    """Before Prefect (and so httpx) is imported: the modules above are absent for this process.
    A module already imported stays as it is."""
    if "httpx" in sys.modules:
        return
    for name in UNUSED_BY_COMMANDS:
        sys.modules.setdefault(name, None)  # type: ignore[assignment]  # None: `import` raises ImportError


@contextmanager
def imports_without_gc() -> Iterator[None]:
    """Around a command's import of its flow: the collector off, and on again afterwards with
    everything imported so far frozen (module-level objects, kept for the process's life). A
    process whose collector is already off is left as it is."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()

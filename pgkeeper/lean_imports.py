"""Optional modules a `pgkeeper` command never uses, kept from being imported.

httpx imports its command-line client (`httpx._main`: rich's progress bars and syntax
highlighting, pygments and its lexers) from `httpx/__init__` inside `try: ... except
ImportError`, falling back to a `main()` that says the CLI extras are missing. Prefect imports
httpx in every command that runs a flow, and nothing in pgkeeper or Prefect calls httpx's CLI:
marking the module absent before httpx is first imported spares each such command about
0.1 s of CPU on its critical path (measured with `python -c "import pgkeeper.flows.backup"`).
Nothing here imports anything.
"""

from __future__ import annotations

import sys

# Imported by an optional fallback only (see the module's docstring); never used by a command.
UNUSED_BY_COMMANDS = ("httpx._main",)


def skip_unused_imports() -> None:
    """Before Prefect (and so httpx) is imported: the modules above are absent for this process.
    A module already imported stays as it is."""
    if "httpx" in sys.modules:
        return
    for name in UNUSED_BY_COMMANDS:
        sys.modules.setdefault(name, None)  # type: ignore[assignment]  # None: `import` raises ImportError

"""Entry point. Command modules are imported lazily: `wal-push` must not pay for Prefect."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms a WAL command)
if TYPE_CHECKING:
    import argparse

# Each module defines register(subparsers); its handlers import heavy things themselves.
COMMAND_MODULES = [
    "pgkeeper.cli.backup_cmd",
    "pgkeeper.cli.catalog_cmd",
    "pgkeeper.cli.demo_cmd",
    "pgkeeper.cli.key_cmd",
    "pgkeeper.cli.metrics_cmd",
    "pgkeeper.cli.restore_cmd",
    "pgkeeper.cli.retention_cmd",
    "pgkeeper.cli.server_cmd",
    "pgkeeper.cli.setup_cmd",
    "pgkeeper.cli.serve_cmd",
    "pgkeeper.cli.verify_cmd",
    "pgkeeper.cli.wal_cmd",
    "pgkeeper.cli.pitr_cmd",
]

# archive_command / restore_command: dispatched before argparse and before anything heavy.
FAST_COMMANDS = {
    "wal-push": "pgkeeper.wal.push",
    "wal-fetch": "pgkeeper.wal.fetch",
}


def build_parser() -> argparse.ArgumentParser:
    import argparse  # here, not at the top: wal-push does not pay for it

    parser = argparse.ArgumentParser(
        prog="pgkeeper", description="PostgreSQL backup and recovery as Prefect flows.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for name, module in FAST_COMMANDS.items():
        sub.add_parser(name, help=f"see `pgkeeper {name} --help` ({module})", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Called as the program (no `argv`: the console script, `python -m`), a
    command that imported Prefect leaves through `leave()` once it is done."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in FAST_COMMANDS:
        module = importlib.import_module(FAST_COMMANDS[args_list[0]])
        return int(module.main(args_list[1:]))
    as_program = argv is None
    if as_program:  # the program, not a caller that imports pgkeeper: see pgkeeper/lean_imports.py
        from pgkeeper.lean_imports import skip_unused_imports

        skip_unused_imports()
    lines: list[str] = []
    code = run_command(args_list, lines.append if as_program else _say)
    if as_program and "prefect" in sys.modules:
        leave(code, lines)
    for line in lines:
        _say(line)
    return code


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def leave(code: int, last_lines: Sequence[str] = ()) -> None:
    """Exit the way the interpreter does, minus tearing down every module object: join the
    threads Python would join and run the exit handlers (Prefect's drain the run's last logs and
    events to the API there), flush, then `os._exit`. Freeing Prefect's object graph one object at
    a time costs about a second of CPU after a backup here, and buys nothing.

    `last_lines` (the command's error line) are written after the exit handlers: a drain that is
    slow to finish logs a warning of its own, and the error must stay the last line a user sees."""
    import atexit
    import threading

    drain_services_together()
    shutdown = getattr(threading, "_shutdown", None)  # non-daemon threads, executors' exit hooks
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for line in last_lines:
        _say(line)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


def drain_services_together() -> None:
    """Prefect's queue services (the run's logs to the API, its events) drained at once: each
    registers its own drain as an exit hook, and those hooks run one after another, each waiting
    for its last batch's round trip. Draining all of them together sends the same logs and
    events, on the same event loop, with the round trips side by side; the hooks then find
    their service drained. Nothing a run logged or emitted is dropped: a drain still sends all
    that was queued before it returns."""
    services = sys.modules.get("prefect._internal.concurrency.services")
    base = getattr(services, "_QueueServiceBase", None)
    if base is not None and hasattr(base, "drain_all"):
        base.drain_all(at_exit=True)  # no timeout, as the exit hooks wait


def run_command(args_list: list[str], say: Callable[[str], None]) -> int:
    """Run the parsed command; an error's one line goes to `say`, never a traceback (but with --debug)."""
    parser = build_parser()
    args = parser.parse_args(args_list)
    from pgkeeper.errors import ExitCode, exit_code_for, expected_error
    from pgkeeper.fmt import first_line

    debug = args.debug or bool(os.environ.get("PGKEEPER_DEBUG"))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        say("pgkeeper: interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        expected = expected_error(exc)  # the error itself, or one it was raised from
        if expected is not None:
            say(f"pgkeeper: error: {first_line(expected)}")
            return exit_code_for(expected)
        if debug:
            raise
        say(f"pgkeeper: error: {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)")
        return ExitCode.UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())

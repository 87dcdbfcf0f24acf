"""Errors a user can act on. Each message is one plain line, never a secret.

Each kind has its own exit code, so a script calling `pgkeeper` can tell them apart
(documented in the README's troubleshooting section).
"""


class ExitCode:
    """Plain ints, not an enum: wal-push imports this module and enum costs it ~4 ms."""

    OK = 0
    FAILED = 1  # an expected failure not listed below (a tool failed, a restore stopped)
    BAD_INPUT = 2  # a bad name, option or setting (argparse uses 2 for usage errors too)
    NOT_FOUND = 3  # no such backup, block or file
    CONNECTION = 4  # the database server is unreachable or refused the login
    INTEGRITY = 5  # stored data does not match its checksum, or a verification failed
    NOT_CONFIRMED = 6  # a restore was not confirmed: nothing was changed
    UNEXPECTED = 70  # a bug or an unforeseen error (EX_SOFTWARE); --debug shows the traceback
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class PgkeeperError(Exception):
    """Base class: the message is shown to the user as-is, on one line.

    `transient` says whether trying again later could help (a retry policy reads it).
    """

    transient = False
    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class BadName(PgkeeperError):
    """A backup name, database name or path that is not acceptable."""

    exit_code = ExitCode.BAD_INPUT


class NotFound(PgkeeperError):
    """A backup, block or file that does not exist."""

    exit_code = ExitCode.NOT_FOUND


class ConnectionFailed(PgkeeperError):
    """The database server could not be reached or refused us."""

    exit_code = ExitCode.CONNECTION


class RepositoryError(PgkeeperError):
    """The repository cannot be read or written."""


class IntegrityError(PgkeeperError):
    """Stored data does not match its recorded checksum or contents."""

    exit_code = ExitCode.INTEGRITY


class ToolFailed(PgkeeperError):
    """A PostgreSQL client tool (pg_dump, pg_restore, ...) failed."""

    transient = True


class NotConfirmed(PgkeeperError):
    """A restore whose confirmation was refused or never came: nothing was changed."""

    exit_code = ExitCode.NOT_CONFIRMED


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an error; an error wrapping an expected one (`raise ... from`) keeps its own."""
    if isinstance(exc, PgkeeperError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.UNEXPECTED


def expected_error(exc: BaseException | None) -> "PgkeeperError | None":
    """The PgkeeperError `exc` is, or was raised from (`raise ... from`); None for anything else.

    Only explicit causes count: an error raised while handling an expected one is still a bug.
    """
    for _ in range(10):
        if exc is None or isinstance(exc, PgkeeperError):
            return exc
        exc = exc.__cause__
    return None

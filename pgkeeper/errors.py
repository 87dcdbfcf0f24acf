"""Errors a user can act on, all in one registry. Each message is one plain line, never a secret.

Every error pgkeeper raises on purpose is a class below. Its kind (the registry's base it
derives from) gives it two properties: `exit_code`, what `pgkeeper` exits with (the CLI reads
it through `exit_code_for`; the README's troubleshooting section has the same table), and
`transient`, whether trying again later could help (the task retry policy, tasks/policy.py,
reads it; one raise may override it, e.g. an unreachable server is transient, a wrong password
is not). Anything else is a bug: exit 70, and retried by tasks as if transient.

| Kind               | Exit | Transient | Meaning                                                  |
|--------------------|------|-----------|----------------------------------------------------------|
| PgkeeperError      | 1    | no        | an expected failure not listed below (a restore stopped) |
| BadName            | 2    | no        | a bad name, option, setting or WAL file name             |
| NotFound           | 3    | no        | no such backup, block or file                            |
| ConnectionFailed   | 4    | per raise | the server is unreachable (transient) or refused us      |
| RepositoryError    | 1    | per raise | the repository cannot be read or written                 |
| IntegrityError     | 5    | no        | stored data does not match its checksum or contents      |
| ToolFailed         | 1    | yes       | pg_dump, pg_restore, ... failed or were killed           |
| NotConfirmed       | 6    | no        | a restore was not confirmed: nothing was changed         |
| NotReadableYet     | 7    | no        | an archived backup is being restored by S3: come back    |
| (KeyboardInterrupt)| 130  |           | Ctrl-C                                                   |
| (anything else)    | 70   | yes       | a bug; `--debug` shows the traceback                     |

The specific errors below derive from these kinds: BadWalName, SetupError (BadName: 2); WalGap,
UnreadableDump (IntegrityError: 5); VerificationFailed, KeyMissing (5); ClockSkew, WalConflict,
ForeignCluster, NotWalSegment, ArchiveFailing, ArchivingOff, WalConfigError, RecoveryFailed,
RestoreFailed, SwapFailed, DrillFailed, FleetIncomplete, DeployFailed, PlaintextAuthRefused
(PgkeeperError: 1).

wal-push and wal-fetch import this module, and keep PostgreSQL's exit codes instead of these
(see wal/fetch.py): it must stay free of imports.
"""

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms a WAL command)
if TYPE_CHECKING:
    from typing import Any


class ExitCode:
    """Plain ints, not an enum: wal-push imports this module and enum costs it ~4 ms."""

    OK = 0
    FAILED = 1  # an expected failure not listed below (a tool failed, a restore stopped)
    BAD_INPUT = 2  # a bad name, option or setting (argparse uses 2 for usage errors too)
    NOT_FOUND = 3  # no such backup, block or file
    CONNECTION = 4  # the database server is unreachable or refused the login
    INTEGRITY = 5  # stored data does not match its checksum, or a verification failed
    NOT_CONFIRMED = 6  # a restore was not confirmed: nothing was changed
    NOT_READABLE_YET = 7  # a backup in an S3 archive class awaits its restore request
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


# The specific errors, each of one kind above. The modules that raise them re-export them.


class BadWalName(BadName):
    """Not a name PostgreSQL gives to archived WAL files (a path, '..'): never worth a retry."""


class ClockSkew(PgkeeperError):
    """A clock is too far off to name a backup by it."""


class WalConflict(PgkeeperError):
    """A WAL file of this name is already archived with different content."""


class ForeignCluster(PgkeeperError):
    """WAL or a backup of one cluster offered to a repository that belongs to another."""


class NotWalSegment(PgkeeperError):
    """The file does not start with a WAL long page header matching its name."""


class ArchiveFailing(PgkeeperError):
    """PostgreSQL cannot archive WAL, or archiving lags too far behind."""


class WalGap(IntegrityError):
    """A segment that a kept base backup needs is missing from the archive."""


class UnreadableDump(IntegrityError):
    """The stored bytes are intact (checksum matched) but pg_restore cannot read the archive."""


class VerificationFailed(PgkeeperError):
    """A check failed; `report` holds every check's line."""

    exit_code = ExitCode.INTEGRITY

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        # A VerifyReport (tasks/verify_checks.py); typed loosely so that this module imports nothing.
        self.report: Any = report


class RecoveryFailed(PgkeeperError):
    """PostgreSQL could not recover to the requested point."""


class RestoreFailed(PgkeeperError):
    """A restore stopped; the message says what state the target database is in."""


class SwapFailed(PgkeeperError):
    """The restored database could not be put in place; the live one is as it was."""


class DrillFailed(PgkeeperError):
    """The PITR drill could not recover, or the recovered copy failed a check."""


class FleetIncomplete(PgkeeperError):
    """Some databases of a fleet run were not backed up."""


class DeployFailed(PgkeeperError):
    """`prefect deploy` did not succeed."""


class NotReadableYet(PgkeeperError):
    """A backup in an S3 archive class (GLACIER, DEEP_ARCHIVE) is not readable until S3 finishes
    the restore request pgkeeper made; the line says when to come back. Not transient: task
    retries wait seconds, S3 takes minutes to hours."""

    exit_code = ExitCode.NOT_READABLE_YET


class SetupError(BadName):
    """The environment does not describe a usable set-up."""


class WalConfigError(PgkeeperError):
    """The WAL archive settings are missing or unreadable."""


class ArchivingOff(PgkeeperError):
    """The server does not archive WAL: a base backup could never be made consistent."""


class KeyMissing(PgkeeperError):
    """An encryption or manifest key is missing, malformed or cannot open a file."""

    exit_code = ExitCode.INTEGRITY


class PlaintextAuthRefused(PgkeeperError):
    """An SMTP password would have crossed the network in clear."""


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

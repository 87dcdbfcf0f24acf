"""Errors a user can act on. Each message is one plain line, never a secret."""


class PgkeeperError(Exception):
    """Base class: the message is shown to the user as-is, on one line.

    `transient` says whether trying again later could help (a retry policy reads it).
    """

    transient = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class BadName(PgkeeperError):
    """A backup name, database name or path that is not acceptable."""


class NotFound(PgkeeperError):
    """A backup, block or file that does not exist."""


class ConnectionFailed(PgkeeperError):
    """The database server could not be reached or refused us."""


class RepositoryError(PgkeeperError):
    """The repository cannot be read or written."""


class IntegrityError(PgkeeperError):
    """Stored data does not match its recorded checksum or contents."""


class ToolFailed(PgkeeperError):
    """A PostgreSQL client tool (pg_dump, pg_restore, ...) failed."""

    transient = True

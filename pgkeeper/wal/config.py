"""Where the WAL commands find the archive, without Prefect: a small JSON file.

PostgreSQL runs `archive_command` / `restore_command` as its own OS user, in a bare
environment, hundreds of times an hour; loading a Prefect block there would cost seconds.
So `pgkeeper wal-setup` and `pgkeeper base-backup` write what the block says into a JSON file
and put its path into the command itself (`pgkeeper wal-push --config /etc/pgkeeper/wal.json %p`):

    {"spool": "/backups/wal",                 # the local archive (the repository's wal/)
     "s3": {"bucket": "b", "prefix": "pgkeeper", "endpoint_url": null, "region": null},
     "compression_level": 1,
     "push_ahead": 8,                         # extra ready files one call archives (0: off)
     "fetch_ahead": 0, "fetch_queue": null}   # wal-fetch prefetch (wal/prefetch.py; pitr sets both)

Precedence: command-line flags (--spool, --repo) over the file named by --config, over
$PGKEEPER_WAL_CONFIG, over /etc/pgkeeper/wal.json. S3 may also come from the old scripts'
variables (S3_BUCKET, S3_PREFIX, AWS_*), read by pgkeeper.settings like everywhere else.
Credentials come from boto3's usual chain unless the file holds them (it is then 0600 and
owned by the server user).
"""

from __future__ import annotations

import json
import os

from pgkeeper.errors import WalConfigError
from pgkeeper.settings import S3Target, s3_from_env

__all__ = ["S3Target", "WalConfig", "WalConfigError", "load", "s3_from_env", "write"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms a WAL command)
if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_CONFIG = "/etc/pgkeeper/wal.json"
ENV_CONFIG = "PGKEEPER_WAL_CONFIG"


DEFAULT_LEVEL = 1
# Files one wal-push call archives beyond its own when PostgreSQL has a backlog (see wal/ahead.py).
DEFAULT_PUSH_AHEAD = 8
# Segments a recovery's wal-fetch keeps fetched ahead in its queue (wal/prefetch.py), when the
# config names a queue directory (pitr does, beside the data directory). Bounds the queue's disk
# use: at most this many segments, complete or being written.
DEFAULT_FETCH_AHEAD = 16


class WalConfig:
    __slots__ = ("spool", "s3", "compression_level", "keep_local_seconds", "push_ahead", "recipients",
                 "identity_file", "fetch_ahead", "fetch_queue")

    def __init__(self, spool: str, s3: S3Target | None = None, compression_level: int = DEFAULT_LEVEL,
                 keep_local_seconds: float = 0.0, push_ahead: int = DEFAULT_PUSH_AHEAD,
                 recipients: list[str] | None = None, identity_file: str | None = None,
                 fetch_ahead: int = 0, fetch_queue: str | None = None) -> None:
        self.spool = spool
        self.s3 = s3
        self.compression_level = compression_level
        self.keep_local_seconds = keep_local_seconds
        self.push_ahead = push_ahead
        # Public keys wal-push encrypts segments to; the private key is only where WAL is read
        # back (identity_file, a 0600 file: pitr writes one for its recovery and removes it).
        self.recipients = list(recipients or [])
        self.identity_file = identity_file
        self.fetch_ahead = fetch_ahead
        self.fetch_queue = fetch_queue

    def as_dict(self) -> dict:
        return {"spool": self.spool, "s3": self.s3.as_dict() if self.s3 else None,
                "compression_level": self.compression_level, "keep_local_seconds": self.keep_local_seconds,
                "push_ahead": self.push_ahead, "recipients": self.recipients, "identity_file": self.identity_file,
                "fetch_ahead": self.fetch_ahead, "fetch_queue": self.fetch_queue}

    def identities(self) -> list[str]:
        """The private keys that read encrypted WAL back ($PGKEEPER_AGE_IDENTITY_FILE, then the
        config's identity_file), read only when an encrypted object is met."""
        from pgkeeper.sealing import parse_identities

        found: list[str] = []
        for path in (os.environ.get("PGKEEPER_AGE_IDENTITY_FILE"), self.identity_file):
            if path:
                try:
                    with open(path) as f:
                        found += parse_identities(f.read())
                except FileNotFoundError:
                    continue
        return found

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WalConfig) and self.as_dict() == other.as_dict()

    @classmethod
    def from_dict(cls, data: dict) -> WalConfig:
        s3 = data.get("s3")
        try:
            return cls(spool=str(data["spool"]), s3=S3Target(**s3) if s3 else None,
                       compression_level=int(data.get("compression_level", DEFAULT_LEVEL)),
                       keep_local_seconds=float(data.get("keep_local_seconds", 0.0)),
                       push_ahead=int(data.get("push_ahead", DEFAULT_PUSH_AHEAD)),
                       recipients=[str(r) for r in data.get("recipients") or []],
                       identity_file=data.get("identity_file"),
                       fetch_ahead=int(data.get("fetch_ahead") or 0), fetch_queue=data.get("fetch_queue"))
        except (KeyError, TypeError, ValueError) as exc:
            raise WalConfigError(f"WAL config is incomplete or malformed: {exc}") from None


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG


def load(config: str | None = None, spool: str | None = None, repo: str | None = None) -> WalConfig:
    """The settings for one wal-push/wal-fetch call."""
    path = config_path(config)
    data: dict = {}
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        # A missing default file is fine when flags say where the archive is; a named one is not.
        if config or not (spool or repo):
            raise WalConfigError(f"no WAL archive configured: {path} does not exist "
                                 "(run `pgkeeper wal-setup`, or pass --repo DIR)") from None
    except (OSError, ValueError) as exc:
        raise WalConfigError(f"cannot read WAL config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise WalConfigError(f"WAL config {path} does not hold a JSON object (found {type(data).__name__})")
    if repo:
        data["spool"] = os.path.join(repo, "wal")
    if spool:
        data["spool"] = spool
    cfg = WalConfig.from_dict(data)
    if cfg.s3 is None:
        cfg.s3 = s3_from_env()
    endpoint = cfg.s3.endpoint_url if cfg.s3 is not None else None
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise WalConfigError(f"WAL config {path}: S3 endpoint {endpoint!r} needs a scheme (https://...)")
    return cfg


def write(path: os.PathLike[str] | str, cfg: WalConfig, owner: tuple[int, int] | None = None,
          credentials_file: os.PathLike[str] | str | None = None) -> Path:
    """Write the config atomically, 0600, owned by the server's OS user if given.

    The file never holds a secret: the server's OS user (so any database superuser, through
    pg_read_file) can read it, and wal-push needs no cloud credential at all. The bucket's keys,
    when the caller wants the server to read WAL from S3 (pitr), go to `credentials_file`."""
    from pathlib import Path  # here: the WAL commands only read the file, and pathlib costs them ~3 ms

    from pgkeeper.storage.atomic import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cfg.as_dict()
    if cfg.s3 is not None:
        data["s3"] = cfg.s3.public_dict()
        if credentials_file is not None and cfg.s3.access_key_id:
            creds = Path(credentials_file)
            atomic_write_bytes(creds, json.dumps(cfg.s3.credentials()).encode(), mode=0o600)
            if owner is not None and os.geteuid() == 0:
                os.chown(creds, *owner)
            data["s3"]["credentials_file"] = str(creds)
    content = json.dumps(data, indent=2).encode() + b"\n"
    try:
        same = path.read_bytes() == content
    except OSError:
        same = False
    if same:
        # Left as it is: a rewrite would change the file's identity, which pushed-ahead markers
        # record (wal/ahead.py), and make the archiver push those files again.
        os.chmod(path, 0o600)
    else:
        atomic_write_bytes(path, content, mode=0o600)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)
    return path

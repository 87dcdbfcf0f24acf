"""Where the WAL commands find the archive, without Prefect: a small JSON file.

PostgreSQL runs `archive_command` / `restore_command` as its own OS user, in a bare
environment, hundreds of times an hour; loading a Prefect block there would cost seconds.
So `pgkeeper wal-setup` and `pgkeeper base-backup` write what the block says into a JSON file
and put its path into the command itself (`pgkeeper wal-push --config /etc/pgkeeper/wal.json %p`):

    {"spool": "/backups/wal",                 # the local archive (the repository's wal/)
     "s3": {"bucket": "b", "prefix": "pgkeeper", "endpoint_url": null, "region": null},
     "compression_level": 1,
     "push_ahead": 8}                         # extra ready files one call archives (0: off)

Precedence: command-line flags (--spool, --repo) over the file named by --config, over
$PGKEEPER_WAL_CONFIG, over /etc/pgkeeper/wal.json. S3 may also come from S3_BUCKET /
S3_PREFIX / AWS_ENDPOINT_URL. Credentials come from boto3's usual chain unless the file holds
them (it is then 0600 and owned by the server user).
"""

from __future__ import annotations

import json
import os

from pgkeeper.errors import PgkeeperError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms a WAL command)
if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_CONFIG = "/etc/pgkeeper/wal.json"
ENV_CONFIG = "PGKEEPER_WAL_CONFIG"


class WalConfigError(PgkeeperError):
    """The WAL archive settings are missing or unreadable."""


class S3Target:
    """Where shipped WAL lives in S3. A plain class, not a dataclass: importing dataclasses
    (and inspect) costs wal-push ~5 ms per segment."""

    __slots__ = ("bucket", "prefix", "endpoint_url", "region", "access_key_id", "secret_access_key")

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Target) and self.as_dict() == other.as_dict()

    def wal_prefix(self) -> str:
        """Key prefix of the WAL archive: <prefix>/wal/ (the repository's wal/ prefix)."""
        base = self.prefix.strip("/")
        return f"{base}/wal/" if base else "wal/"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.wal_prefix()}"


DEFAULT_LEVEL = 1
# Files one wal-push call archives beyond its own when PostgreSQL has a backlog (see wal/ahead.py).
DEFAULT_PUSH_AHEAD = 8


class WalConfig:
    __slots__ = ("spool", "s3", "compression_level", "keep_local_seconds", "push_ahead")

    def __init__(self, spool: str, s3: S3Target | None = None, compression_level: int = DEFAULT_LEVEL,
                 keep_local_seconds: float = 0.0, push_ahead: int = DEFAULT_PUSH_AHEAD) -> None:
        self.spool = spool
        self.s3 = s3
        self.compression_level = compression_level
        self.keep_local_seconds = keep_local_seconds
        self.push_ahead = push_ahead

    def as_dict(self) -> dict:
        return {"spool": self.spool, "s3": self.s3.as_dict() if self.s3 else None,
                "compression_level": self.compression_level, "keep_local_seconds": self.keep_local_seconds,
                "push_ahead": self.push_ahead}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WalConfig) and self.as_dict() == other.as_dict()

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=2).encode() + b"\n"

    @classmethod
    def from_dict(cls, data: dict) -> WalConfig:
        s3 = data.get("s3")
        try:
            return cls(spool=str(data["spool"]), s3=S3Target(**s3) if s3 else None,
                       compression_level=int(data.get("compression_level", DEFAULT_LEVEL)),
                       keep_local_seconds=float(data.get("keep_local_seconds", 0.0)),
                       push_ahead=int(data.get("push_ahead", DEFAULT_PUSH_AHEAD)))
        except (KeyError, TypeError, ValueError) as exc:
            raise WalConfigError(f"WAL config is incomplete or malformed: {exc}") from None


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG


def s3_from_env(env: dict[str, str] | os._Environ = os.environ) -> S3Target | None:
    if not env.get("S3_BUCKET"):
        return None
    return S3Target(bucket=env["S3_BUCKET"], prefix=env.get("S3_PREFIX", ""),
                    endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
                    region=env.get("AWS_DEFAULT_REGION") or None)


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


def write(path: os.PathLike[str] | str, cfg: WalConfig, owner: tuple[int, int] | None = None) -> Path:
    """Write the config atomically, 0600, owned by the server's OS user if given."""
    from pathlib import Path  # here: the WAL commands only read the file, and pathlib costs them ~3 ms

    from pgkeeper.storage.atomic import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, cfg.to_json(), mode=0o600)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)
    return path

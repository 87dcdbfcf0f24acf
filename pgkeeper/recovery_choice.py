"""Which base backup a point-in-time recovery starts from, and its target: decided the same way
by the pitr flow's steps (tasks/recovery.py) and by `pgkeeper pitr`'s early start
(pgkeeper/early_pitr.py), which chooses before Prefect is imported. Nothing here imports Prefect.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from pgkeeper.catalog import ManifestSource, list_backups
from pgkeeper.errors import BadName, NotFound
from pgkeeper.manifest import Manifest
from pgkeeper.wal.command import conf_quote
from pgkeeper.wal.naming import parse_lsn


class RecoveryTarget(BaseModel):
    kind: Literal["time", "lsn", "name", "latest"]
    value: str | None = None

    def describe(self) -> str:
        return "the end of the archived WAL" if self.kind == "latest" else f"{self.kind} {self.value}"

    def settings(self) -> dict[str, str]:
        if self.kind == "latest":
            return {}
        return {f"recovery_target_{self.kind}": conf_quote(str(self.value)),
                "recovery_target_action": "'promote'"}


def parse_target(target_time: str | None = None, target_lsn: str | None = None,
                 target_name: str | None = None, latest: bool = False) -> RecoveryTarget:
    """Exactly one target; a time without a zone is taken as UTC."""
    given = [k for k, v in (("time", target_time), ("lsn", target_lsn), ("name", target_name),
                            ("latest", latest)) if v]
    if len(given) != 1:
        raise BadName("give exactly one recovery target: --target-time, --target-lsn, --target-name or --latest")
    if target_time:
        try:
            when = datetime.fromisoformat(target_time.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadName(f"recovery target time {target_time!r} is not a time like "
                          "'2024-03-15 14:30:00+00'") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return RecoveryTarget(kind="time", value=when.astimezone(UTC).isoformat(sep=" "))
    if target_lsn:
        if not re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", target_lsn.strip()):
            raise BadName(f"recovery target LSN {target_lsn!r} is not like 0/3000060")
        return RecoveryTarget(kind="lsn", value=target_lsn.strip().upper())
    if target_name:
        if len(target_name) > 63 or "'" in target_name or "\n" in target_name:
            raise BadName(f"restore point name {target_name!r} is not acceptable")
        return RecoveryTarget(kind="name", value=target_name)
    return RecoveryTarget(kind="latest")


def physical_backups(storage: ManifestSource) -> list[Manifest]:
    """The base backups `storage` lists, oldest first."""
    return [m for m in list_backups(storage) if m.kind == "physical"]


def of_cluster(backups: list[Manifest], system_identifier: str | None, where: str) -> tuple[list[Manifest], str]:
    """Only the base backups of one cluster; with none named, there must be only one."""
    clusters = sorted({m.system_identifier or "?" for m in backups})
    if system_identifier is None:
        if len(clusters) > 1:
            raise BadName(f"{where} holds base backups of several clusters ({', '.join(clusters)}): "
                          "name one with --system-identifier")
        return backups, clusters[0] if clusters else "?"
    mine = [m for m in backups if m.system_identifier == system_identifier]
    if backups and not mine:
        raise NotFound(f"no base backup of cluster {system_identifier} in {where} "
                       f"(it holds cluster(s) {', '.join(clusters)})")
    return mine, system_identifier


def newest_before(backups: list[Manifest], target: RecoveryTarget, system_identifier: str | None,
                  where: str) -> tuple[Manifest, str]:
    """The newest of `backups` (base backups, oldest first) of the cluster that was consistent
    before the target, and that cluster's identifier."""
    backups, cluster = of_cluster(backups, system_identifier, where)
    if not backups:
        raise NotFound(f"no base backups in {where}: run `pgkeeper base-backup` first")
    if target.kind == "time":
        when = datetime.fromisoformat(str(target.value))
        eligible = [m for m in backups if m.finished_at <= when]
        if not eligible:
            first = min(backups, key=lambda m: m.finished_at)
            raise NotFound(f"the target {when.isoformat(sep=' ')} is before the oldest base backup "
                           f"({first.backup_id}, consistent from {first.finished_at.isoformat(sep=' ')})")
        chosen = max(eligible, key=lambda m: m.finished_at)
    elif target.kind == "lsn":
        want = parse_lsn(str(target.value))
        eligible = [m for m in backups if m.stop_lsn and parse_lsn(m.stop_lsn) <= want]
        if not eligible:
            raise NotFound(f"the target LSN {target.value} is before the oldest base backup's end "
                           f"({backups[0].backup_id}, {backups[0].stop_lsn})")
        chosen = max(eligible, key=lambda m: parse_lsn(m.stop_lsn or "0/0"))
    else:
        chosen = backups[-1]
    return chosen, cluster

"""Prefect artifacts that sum up a run for the UI."""

from __future__ import annotations

import re

from prefect.artifacts import create_markdown_artifact

from pgkeeper.fmt import contents, human_bytes, human_seconds
from pgkeeper.manifest import Manifest


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def backup_summary_markdown(m: Manifest, location: str, warnings: list[str]) -> str:
    ratio = f"{m.ratio:.1f}x" if m.ratio else "-"
    rows = sum(m.tables.values())
    lines = [
        f"# Backup {m.backup_id} of `{m.database}`",
        "",
        f"- **Database**: `{m.database}` (PostgreSQL {m.server_version}, {human_bytes(m.database_size)})",
        f"- **Backup id**: `{m.backup_id}`",
        f"- **Location**: `{location}`",
        f"- **Size**: {human_bytes(m.size)} (raw dump {human_bytes(m.raw_size)}, ratio {ratio}, {m.compression})",
        f"- **Duration**: {human_seconds(m.duration_seconds)}",
        f"- **Tables**: {contents(len(m.tables), m.objects.get('indexes', 0), rows)}",
        f"- **Checksum**: sha256 `{m.dump_file.sha256}`",
        f"- **Status**: {m.status}",
    ]
    if warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in warnings]
    lines += ["", "| Table | Rows |", "|---|---:|"] + [f"| `{t}` | {n} |" for t, n in m.tables.items()]
    return "\n".join(lines)


def report_backup(manifest: Manifest, location: str, warnings: list[str]) -> str:
    """The run's summary artifact: database, id, size, ratio, duration, tables, checksum.

    Called in the flow itself, not as a task: the artifact then belongs to the flow run
    (the UI's Artifacts tab of the run shows it, instead of "Flow run: None").
    """
    create_markdown_artifact(
        backup_summary_markdown(manifest, location, warnings),
        key=artifact_key("backup", manifest.database),
        description=f"Backup {manifest.backup_id} of {manifest.database}",
    )
    return manifest.backup_id

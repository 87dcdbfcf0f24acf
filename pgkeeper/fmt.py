"""Plain formatting of sizes and durations for people."""

from __future__ import annotations


def first_line(text: object, empty: str = "") -> str:
    """The first line of an error's message (or of any text), `empty` when there is none: what a
    one-line report shows. This module imports nothing, so wal-fetch can use it too."""
    lines = str(text).strip().splitlines()
    return lines[0] if lines else empty


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 table`, `2 tables`, `1 index`, `3 indexes`."""
    if n == 1:
        return f"1 {word}"
    return f"{n:,} {many or (word + 'es' if word.endswith(('x', 's', 'sh', 'ch')) else word + 's')}"


def contents(tables: int, indexes: int, rows: int | None = None) -> str:
    """What a backup holds, counted one way everywhere: tables whose rows the dump carries, all
    indexes (those behind primary keys and unique constraints too), and rows."""
    parts = [plural(tables, "table")]
    if rows is not None:
        parts.append(plural(rows, "row"))
    parts.append(plural(indexes, "index"))
    return ", ".join(parts)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns aligned with two spaces, headers first (the command line's listings, the demo's)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)

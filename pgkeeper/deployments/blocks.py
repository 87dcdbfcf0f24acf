"""Saving blocks so that running set-up twice changes nothing the second time."""

from __future__ import annotations

from typing import Any, TypeVar

from prefect.blocks.core import Block

from pgkeeper.config import load_block

B = TypeVar("B", bound=Block)


def _settings_only(value: Any) -> Any:
    # A loaded block also dumps its document id and name (keys starting with "_").
    if isinstance(value, dict):
        return {k: _settings_only(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_settings_only(v) for v in value]
    return value


def _plain(block: Block) -> Any:
    # Secrets revealed for the comparison only; the result is never printed or logged.
    return _settings_only(block.model_dump(mode="json", context={"include_secrets": True}))


def save_block(block: B, name: str) -> tuple[str, B]:
    """Create or update the block `name`; ('created'|'updated'|'unchanged', the saved block).

    The returned block is bound to its saved document, so other blocks can reference it.
    """
    existing = load_block(type(block), name)
    if existing is not None and _plain(existing) == _plain(block):
        return "unchanged", existing
    block.save(name, overwrite=True)
    return ("created" if existing is None else "updated"), block

"""Notification channels: where pgkeeper's automations send what they have to say.

Every channel is a Prefect `NotificationBlock`, which is what an automation's
SendNotification action takes: the shipped mail block (pgkeeper-mail), and the ones Prefect
ships, created by `pgkeeper setup` from the environment:

    SLACK_WEBHOOK_URL   -> SlackWebhook                    pgkeeper-slack
    TEAMS_WEBHOOK_URL   -> MicrosoftTeamsWebhook           pgkeeper-teams
    ALERT_WEBHOOK_URL   -> CustomWebhookNotificationBlock  pgkeeper-webhook (JSON POST:
                           {"source": "pgkeeper", "subject": ..., "body": ...}; healthchecks-style)
    PGKEEPER_NOTIFICATION_BLOCKS  existing blocks of any NotificationBlock type, comma-separated
                           as `block-type-slug/name` (PagerDuty, Discord, Opsgenie, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse
from uuid import UUID

from pydantic import SecretStr

from pgkeeper.deployments.blocks import save_block
from pgkeeper.errors import ExitCode, PgkeeperError

SLACK_BLOCK = "pgkeeper-slack"
TEAMS_BLOCK = "pgkeeper-teams"
WEBHOOK_BLOCK = "pgkeeper-webhook"
WEBHOOK_JSON = {"source": "pgkeeper", "subject": "{{subject}}", "body": "{{body}}"}


class ChannelError(PgkeeperError):
    exit_code = ExitCode.BAD_INPUT


def _slack(url: str) -> Any:
    from prefect.blocks.notifications import SlackWebhook

    return SlackWebhook(url=SecretStr(url))


def _teams(url: str) -> Any:
    from prefect.blocks.notifications import MicrosoftTeamsWebhook

    return MicrosoftTeamsWebhook(url=SecretStr(url))


def _webhook(url: str) -> Any:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(name="pgkeeper", url=url, method="POST", json_data=dict(WEBHOOK_JSON))


FROM_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "SLACK_WEBHOOK_URL": (SLACK_BLOCK, _slack),
    "TEAMS_WEBHOOK_URL": (TEAMS_BLOCK, _teams),
    "ALERT_WEBHOOK_URL": (WEBHOOK_BLOCK, _webhook),
}


def existing_block_id(ref: str) -> UUID:
    """The document id of an existing block named `block-type-slug/name`."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug, _, name = ref.strip().partition("/")
    if not slug or not name:
        raise ChannelError(f"PGKEEPER_NOTIFICATION_BLOCKS: {ref.strip()!r} is not block-type-slug/name")
    with get_client(sync_client=True) as client:
        try:
            return client.read_block_document_by_name(name, block_type_slug=slug).id
        except ObjectNotFound:
            raise ChannelError(f"PGKEEPER_NOTIFICATION_BLOCKS: no block {ref.strip()!r} on the server") from None


def channel_blocks(env: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    """(variable, block name, unsaved block) for each channel the environment sets."""
    found = []
    for var, (name, make) in FROM_ENV.items():
        url = env.get(var, "").strip()
        if not url:
            continue
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ChannelError(f"{var} must be an http(s):// URL")
        try:
            found.append((var, name, make(url)))
        except ValueError as exc:  # pydantic's or Prefect's own URL checks; the URL is not echoed (it is a secret)
            raise ChannelError(f"{var} is not a usable webhook URL ({type(exc).__name__})") from None
    return found


def ensure_channels(env: Mapping[str, str], note: Callable[[str, str], None]) -> list[UUID]:
    """Save the channel blocks the environment describes; their document ids (mail not included)."""
    ids: list[UUID] = []
    for var, name, block in channel_blocks(env):
        outcome, saved = save_block(block, name)
        note(f"block {name} ({var})", outcome)
        ids.append(saved._block_document_id)
    for ref in env.get("PGKEEPER_NOTIFICATION_BLOCKS", "").split(","):
        if ref.strip():
            ids.append(existing_block_id(ref))
            note(f"channel {ref.strip()}", "unchanged")
    return ids

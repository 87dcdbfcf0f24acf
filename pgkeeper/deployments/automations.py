"""The automations that turn run failures and pgkeeper warnings into mail.

They live on the Prefect server (the UI's Automations page shows them) and act there: the
server renders the templates and calls the pgkeeper-mail block's `notify`. So a run whose
process was killed (Crashed) or that ran out of time (TimedOut) still produces mail, and no
flow of ours sends failure mail, so a failing notifier can never trigger itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.automations import Automation, ChangeFlowRunState, EventTrigger, SendNotification
from prefect.events.schemas.automations import AutomationCore, Posture

from pgkeeper.alerts import WARNING_EVENT
from pgkeeper.runinfo import RUN_ID_LINE, RUN_TAG  # notify() reads RUN_ID_LINE to find the failed step
from pgkeeper.settings import HEARTBEAT_GRACE_SECONDS

FAILURE_AUTOMATION = "pgkeeper: mail on failed run"
CRASH_AUTOMATION = "pgkeeper: crash runs whose heartbeat stopped"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
# Runs beat every 30 s by default (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set in prefect.yaml from the
# variable pgkeeper_heartbeat_seconds and by `pgkeeper serve`): after HEARTBEAT_GRACE_SECONDS (90,
# three missed beats) without one the machine is taken for dead. Both are settings
# (settings.heartbeat_settings: PGKEEPER_HEARTBEAT_SECONDS, PGKEEPER_HEARTBEAT_GRACE_SECONDS).
# Any of these after a beat means the run ended or stopped beating on purpose (a paused or
# suspended run waiting for input), not that its machine died.
STILL_ACCOUNTED_FOR = {HEARTBEAT_EVENT, "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                       "prefect.flow-run.Crashed", "prefect.flow-run.Cancelled", "prefect.flow-run.Cancelling",
                       "prefect.flow-run.TimedOut", "prefect.flow-run.Paused", "prefect.flow-run.Suspended",
                       "prefect.flow-run.AwaitingRetry", "prefect.flow-run.Scheduled"}
WARNING_AUTOMATION = "pgkeeper: mail on warning"
TAG = RUN_TAG  # every pgkeeper run carries it, however started (runinfo.tag_every_run)
FAILURE_EVENTS = {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}

# pgkeeper's own runs are named "backup crm 2026-11-30" (the database in every subject); others
# keep Prefect's random names, so the flow's name goes in front of those.
FAILURE_SUBJECT = ("[pgkeeper] {% if flow_run.name.startswith(flow.name ~ ' ') %}{{ flow_run.name }}"
                   "{% else %}{{ flow.name }} run {{ flow_run.name }}{% endif %} {{ flow_run.state.name }}")
FAILURE_BODY = """\
The pgkeeper flow {{ flow.name }} (run {{ flow_run.name }}{% if deployment %}, deployment \
{{ deployment.name }}{% endif %}) ended {{ flow_run.state.name }}.

Error: {{ flow_run.state.message or "no message (the process may have been killed)" }}
Started: {{ flow_run.start_time }}
Run: {{ flow_run|ui_url }}
""" + RUN_ID_LINE + "{{ flow_run.id }}\n"

WARNING_SUBJECT = "[pgkeeper] warning ({{ event.payload.kind }}) on {{ event.payload.database }}"
WARNING_BODY = """\
{{ event.payload.message }}

Kind: {{ event.payload.kind }}
Database: {{ event.payload.database }}
{% if flow_run %}Run: {{ flow_run.name }} {{ flow_run|ui_url }}
{% endif %}"""


def notify_actions(block_document_ids: UUID | Sequence[UUID], subject: str, body: str) -> list[SendNotification]:
    """One action per channel (mail, Slack, webhook...): one failing channel does not silence the rest."""
    ids = [block_document_ids] if isinstance(block_document_ids, UUID) else list(block_document_ids)
    return [SendNotification(block_document_id=i, subject=subject, body=body) for i in ids]


def failure_automation(block_document_id: UUID | Sequence[UUID]) -> Automation:
    return Automation(
        name=FAILURE_AUTOMATION,
        description="Mail when a pgkeeper run fails, crashes or times out.",
        trigger=EventTrigger(
            expect=FAILURE_EVENTS,
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{TAG}"},
            posture=Posture.Reactive, threshold=1, within=0,
        ),
        actions=notify_actions(block_document_id, FAILURE_SUBJECT, FAILURE_BODY),
    )


def crash_automation(grace_seconds: int = HEARTBEAT_GRACE_SECONDS) -> Automation:
    """A run whose worker's machine died (or whose process was killed with its worker) never
    reports an end: nobody is left to. Its heartbeats stop, and this marks it Crashed, which the
    failure mail and the fleet report, and which frees its deployment concurrency slot."""
    return Automation(
        name=CRASH_AUTOMATION,
        description=f"Mark a pgkeeper run Crashed when its heartbeat stops for {grace_seconds} s "
                    "(its machine or worker died).",
        trigger=EventTrigger(
            after={HEARTBEAT_EVENT}, expect=STILL_ACCOUNTED_FOR,
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{TAG}"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1, within=grace_seconds,
        ),
        actions=[ChangeFlowRunState(state="CRASHED", name="Crashed",
                                    message=f"no heartbeat for {grace_seconds} s: "
                                            "its worker or machine died")],
    )


def warning_automation(block_document_id: UUID | Sequence[UUID]) -> Automation:
    return Automation(
        name=WARNING_AUTOMATION,
        description="Mail the warnings pgkeeper runs emit (low disk, anomaly, archive lag).",
        trigger=EventTrigger(
            expect={WARNING_EVENT}, match={"prefect.resource.id": "pgkeeper.database.*"},
            posture=Posture.Reactive, threshold=1, within=0,
        ),
        actions=notify_actions(block_document_id, WARNING_SUBJECT, WARNING_BODY),
    )


def _comparable(a: Automation) -> str:
    """What makes two automations the same: everything but ids the server assigns."""
    data: dict[str, Any] = AutomationCore(**a.model_dump(include=set(AutomationCore.model_fields))).model_dump(
        mode="json", exclude={"owner_resource"})
    data["trigger"].pop("id", None)
    # Sets (expect, after) serialize in hash order, which differs from process to process.
    for key in ("expect", "after", "for_each"):
        if isinstance(data["trigger"].get(key), list):
            data["trigger"][key] = sorted(data["trigger"][key])
    return json.dumps(data, sort_keys=True)


def apply_automation(wanted: Automation) -> str:
    """Create or update the automation named like `wanted`; 'created', 'updated' or 'unchanged'."""
    try:
        existing = Automation.read(name=wanted.name)
    except ValueError:
        wanted.create()
        return "created"
    if _comparable(existing) == _comparable(wanted):
        return "unchanged"
    wanted.id = existing.id
    wanted.update()
    return "updated"


def remove_automation(name: str) -> bool:
    try:
        existing = Automation.read(name=name)
    except ValueError:
        return False
    return bool(existing.delete())

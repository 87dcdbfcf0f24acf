"""The notification block: who gets pgkeeper's mail and through which SMTP server.

It is a `NotificationBlock`, so a Prefect automation's SendNotification action can use it:
the Prefect *server* loads this class (through the `prefect.collections` entry point) and
calls `notify`, which is how failure mail goes out even when the run's process was killed.
The SMTP settings live in prefect-email's EmailServerCredentials (password kept secret).
"""

from __future__ import annotations

import socket
import sys
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate, make_msgid

from prefect.blocks.abstract import NotificationBlock
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect_email import EmailServerCredentials
from pydantic import Field

from pgkeeper.runinfo import RUN_ID_LINE, stopped_at


class MailNotification(NotificationBlock):
    """Mail to a list of recipients through an EmailServerCredentials block."""

    _block_type_name = "pgkeeper mail notification"
    _block_type_slug = "pgkeeper-mail-notification"
    _description = "Where pgkeeper sends success, failure and warning mail (SMTP via prefect-email)."

    credentials: EmailServerCredentials = Field(description="SMTP server and login (prefect-email).")
    recipients: list[str] = Field(description="Addresses that receive the mail.")
    sender: str | None = Field(default=None, description="From address; default the SMTP user or pgkeeper@host.")
    subject_prefix: str = Field(default="[pgkeeper]", description="Put in front of every subject.")
    ui_url: str | None = Field(default=None, description="The Prefect UI's address, for links in the mail "
                               "(the server itself may not know the address users reach it at).")
    allow_plaintext_auth: bool = Field(
        default=False, description="Send the SMTP password even when the connection is not encrypted (the "
                                   "server offers no STARTTLS). Off: such a mail is refused. Env: "
                                   "SMTP_ALLOW_PLAINTEXT_AUTH.")

    def from_address(self) -> str:
        return self.sender or self.credentials.username or f"pgkeeper@{socket.getfqdn()}"

    def message(self, subject: str, body: str) -> EmailMessage:
        # Fold only past RFC 5322's 998 characters: at 78, Python folds a long subject before its
        # first word, and the subject arrives with a leading space.
        msg = EmailMessage(policy=default_policy.clone(max_line_length=998))
        prefix = self.subject_prefix.strip()
        # Automation templates may already carry the prefix; never print it twice.
        msg["Subject"] = subject if not prefix or subject.startswith(prefix) else f"{prefix} {subject}"
        msg["From"] = self.from_address()
        msg["To"] = ", ".join(self.recipients)
        # Without them some servers add their own and spam filters score the mail down.
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=self.from_address().rpartition("@")[2] or None)
        msg.set_content(body)
        return msg

    async def notify(self, body: str, subject: str | None = None) -> None:
        """Send one plain-text mail (called by automations on the server, or by `send`)."""
        from anyio import to_thread

        body = await with_failed_step(body, self.ui_url)
        msg = self.message(subject or "notification", body)

        def _send() -> None:
            from pgkeeper.tls import plaintext_auth_allowed, smtp_connect

            # Not credentials.get_server(): it logs in over a plain connection on any port but 465/587.
            with smtp_connect(self.credentials, plaintext_auth_allowed(self.allow_plaintext_auth)) as server:
                server.send_message(msg)

        await to_thread.run_sync(_send)

    def send(self, subject: str, body: str) -> None:
        """The synchronous form, for tasks in sync flows (an un-awaited coroutine sends nothing)."""
        run_coro_as_sync(self.notify(body, subject=subject))


async def with_failed_step(body: str, ui_url: str | None = None) -> str:
    """Add the step that failed to an automation's failure mail.

    The server knows the run but its templates cannot reach the run's task runs; the body
    carries the run id (RUN_ID_LINE) and this looks the failed or interrupted task up.
    Best effort: without it the mail still has the error and the run's link.
    """
    marker = next((line for line in body.splitlines() if line.startswith(RUN_ID_LINE)), None)
    if marker is None:
        return body
    run_id = marker[len(RUN_ID_LINE):].strip()
    if ui_url and "\nRun: None" in body:
        body = body.replace("\nRun: None", f"\nRun: {ui_url.rstrip('/')}/runs/flow-run/{run_id}")
    if "prefect.server.api.server" not in sys.modules:
        # Not inside a Prefect server: no in-process API to ask; keep the id for the reader.
        return body
    step = await _failed_step_when_recorded(run_id)
    return body.replace(marker, f"Step: {step}" if step else "Step: unknown (no task had failed)")


async def _failed_step_when_recorded(run_id: str, patience_seconds: float = 6.0) -> str | None:
    """The failed step, asked again for a few seconds: task-run states reach the server as events,
    recorded apart from the flow run's state, so the automation can act on a Failed flow run before
    its failed task run is on record."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + patience_seconds
    while True:
        try:
            step = await _failed_step(run_id)
        except Exception:
            step = None
        if step or asyncio.get_running_loop().time() >= deadline:
            return step
        await asyncio.sleep(0.5)


async def _failed_step(flow_run_id: str) -> str | None:
    """The name and state of the last task run of the flow run that did not complete."""
    import asyncio

    from prefect.server.api.clients import OrchestrationClient

    # In the server process (where automations act), OrchestrationClient talks to the
    # running server in-process; it is what the server's own actions use.
    async with OrchestrationClient() as client:
        response = await asyncio.wait_for(client._http_client.post(  # noqa: SLF001
            "/task_runs/filter",
            json={"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_DESC",
                  "limit": 50}), timeout=10)
        response.raise_for_status()
    found = stopped_at((run["name"], (run.get("state") or {}).get("type"), (run.get("state") or {}).get("name"))
                       for run in response.json())
    return f"{found[0]} ({found[1]})" if found else None

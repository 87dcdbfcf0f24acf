"""`pgkeeper setup`: blocks, work pool, deployments and automations from the environment."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP_EPILOG = """\
Reads the old scripts' variables: POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD, BACKUP_DIR
(required); POSTGRES_HOST, POSTGRES_PORT; ENABLE_S3_UPLOAD, S3_BUCKET, S3_PREFIX (AWS_* for
credentials, AWS_ENDPOINT_URL for S3-compatible stores); ENABLE_EMAIL_ALERTS, ALERT_EMAIL
(comma-separated), SMTP_HOST, SMTP_PORT, SMTP_USER, SMTP_PASS (SMTP_TYPE=SSL|STARTTLS|INSECURE
overrides the port's default); RETENTION_DAYS; SENTRY_DSN. pgkeeper's own: PGKEEPER_TIMEZONE
(schedules, default TZ or UTC), PGKEEPER_WORK_POOL (default pgkeeper), ENABLE_WAL_ARCHIVING
(true: WAL shipping and base backup schedules run; otherwise they are created paused),
PGKEEPER_FLEET_FILE (or --fleet-file: one line per database, `database host port user PASSWORD_VARIABLE`;
a connection block each, the fleet's list, and the fleet's schedules resumed).
More notification channels: SLACK_WEBHOOK_URL, TEAMS_WEBHOOK_URL, ALERT_WEBHOOK_URL (JSON POST),
PGKEEPER_NOTIFICATION_BLOCKS (existing blocks, slug/name, comma-separated). Alerts on absence:
PGKEEPER_DATABASES (default POSTGRES_DB), BACKUP_ALERT_HOURS (26), VERIFY_ALERT_DAYS (8),
WAL_ALERT_MINUTES (60), WORKER_ALERT_MINUTES (10). A run whose machine dies: runs beat every
PGKEEPER_HEARTBEAT_SECONDS (30, Prefect's minimum) and are marked Crashed after
PGKEEPER_HEARTBEAT_GRACE_SECONDS (90) without a beat.
Running it again applies changes and leaves everything else as it is."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("setup", help="create or update blocks, work pool, deployments, automations (from env)",
                       epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefect-yaml", type=Path, default=None,
                   help="the prefect.yaml to deploy (default ./prefect.yaml, else pgkeeper's own)")
    p.add_argument("--fleet-file", type=Path, default=None,
                   help="the databases of a fleet, one per line: database host port user PASSWORD_VARIABLE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from pgkeeper.settings import check_environment

    if args.fleet_file is not None:
        os.environ["PGKEEPER_FLEET_FILE"] = str(args.fleet_file)
    # A missing variable is reported before anything starts or connects.
    check_environment(os.environ)
    from pgkeeper.local_server import ensure_api

    url = ensure_api()
    from pgkeeper.deployments.setup import run_setup

    def report(item: str, outcome: str) -> None:
        print(f"{outcome:>10}  {item}", flush=True)

    done = run_setup({**os.environ, "PREFECT_API_URL": url}, args.prefect_yaml, report)
    changed = sum(outcome in {"created", "updated", "removed"} for _, outcome in done)
    print(f"pgkeeper is set up against {url}: {changed} change(s)" if changed
          else f"pgkeeper is set up against {url}: nothing to change")
    return 0

"""`pgkeeper restore`'s early shadow: when the run's plan is sure to make the same shadow, the early
start's child goes on from the work file it wrote (pgkeeper/early_restore.py) to create the shadow
database and `pg_restore -j` into it, while the command imports Prefect and creates the run.

Decided in the command, before the fork, with the queries the run's plan makes
(tasks/restore_steps.plan_restore) and only where their answer is the plan's: the backup's own
database properties recorded (the plan takes them, not the target's), every role they and the
backup name present (no roles to create), a server that can reproduce them, a new database that
does not exist (`--into`) or a replace confirmed on the command line (`--yes`; without it the
terminal's answer comes after Prefect is imported, and nothing is written before it). Anything
else steps aside: the early start only fetches, as before. The restore slot is taken over REST
first (a second restore of the target finds it held, as it finds the run's); a slot held by
another restore steps aside too (the run waits for it in its own step, as before).

The shadow's comment names the command's process (not the child's, which ends before the run
does), so a SIGKILL of the command leaves a shadow the next run drops (tasks/swap.stale_shadows).
The run adopts the running restore only when its plan matches what was started (`fits`); the
command line's plan takes the shadow's name (`named_as_started`). Nothing here imports Prefect.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgkeeper.errors import PgkeeperError

if TYPE_CHECKING:
    import argparse

    from pgkeeper.connection import PlainConnection
    from pgkeeper.manifest import DatabaseProperties, Manifest

SYSTEM_DATABASES = {"postgres", "template0", "template1"}


@dataclass(frozen=True)
class ShadowSpec:
    """The shadow an early start makes and restores into: what the run's plan must say too."""

    mode: str
    target: str
    shadow: str
    properties: DatabaseProperties
    owner: str
    keep_ownership: bool
    jobs: int
    reads_beside: bool  # the content proof reads the data beside post-data (reads_data_beside)


def reads_data_beside(dump_settings: dict[str, str], keep_ownership: bool,
                      props: DatabaseProperties | None) -> bool:
    """Whether the content proof's read of the shadow's data may start beside the post-data
    section (tasks/restore_steps.shadow_data_reading says why not otherwise)."""
    return bool(dump_settings) and keep_ownership and not (props and (props.settings or props.role_settings))


def shadow_spec(args: argparse.Namespace, conn: PlainConnection, manifest: Manifest) -> ShadowSpec | None:
    """The shadow the run's plan will make for this command, when the command line and these
    queries decide it; None (fetch only) otherwise. See the module's docstring."""
    import psycopg

    from pgkeeper import dbprops, pgdb, roles
    from pgkeeper.names import check_identifier
    from pgkeeper.shadowdb import shadow_name

    props = manifest.database_properties
    if props is None or args.create_roles:
        return None
    if args.into:
        mode, target = "new", args.into
    elif args.yes:
        mode, target = "replace", args.target or manifest.database
        if target in SYSTEM_DATABASES:
            return None  # the plan refuses it
    else:
        return None  # the terminal's answer comes first
    try:
        check_identifier("target database", target)
        with pgdb.admin_connection(conn) as c:  # type: ignore[arg-type]
            exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone() is not None
            if mode == "new" and exists:
                return None  # the plan refuses it
            if roles.missing_roles(c, sorted(set(manifest.roles) | {props.owner})):
                return None  # the plan refuses, or creates them
            if dbprops.unreproducible(c, props):
                return None
    except (PgkeeperError, psycopg.Error, OSError, ValueError):
        return None  # the run's plan meets it and says so
    return ShadowSpec(mode=mode, target=target, shadow=shadow_name(target, uuid.uuid4().hex[:6]),
                      properties=props, owner=props.owner, keep_ownership=args.keep_ownership, jobs=args.jobs,
                      reads_beside=reads_data_beside(manifest.dump_settings, args.keep_ownership, props))


def fits(spec: ShadowSpec, plan: Any, jobs: int) -> bool:
    """Whether the run's plan (tasks/restore_steps.RestorePlan) makes the shadow that was started:
    same target and mode, same shadow name, properties, owner and ownership, no roles to create,
    the same pg_restore jobs, and the same reading of the data beside post-data."""
    return (plan.mode == spec.mode and plan.target == spec.target and plan.shadow == spec.shadow
            and plan.properties == spec.properties and plan.owner == spec.owner
            and plan.keep_ownership == spec.keep_ownership and not plan.roles_to_create and jobs == spec.jobs
            and reads_data_beside(plan.dump_settings, plan.keep_ownership, plan.properties) == spec.reads_beside)


def named_as_started(spec: ShadowSpec, plan: Any) -> Any:
    """The command line's plan with the started shadow's name, when it is otherwise that shadow's
    plan (the run then adopts the restore); else the plan as it was."""
    named = plan.model_copy(update={"shadow": spec.shadow})
    return named if fits(spec, named, spec.jobs) else plan

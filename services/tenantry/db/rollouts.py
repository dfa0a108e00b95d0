"""The fleet rollout's statements (a MIGRATE operation over tenant schemas).

Every tenant is upgraded in its own transaction, which locks the tenant row,
checks its recorded revision, runs the revision steps' DDL, stamps the new
revision on the row and appends the tenant's SCHEMA_MIGRATED event last
(tenantry.db.events). The row lock and the recorded revision make an upgrade
happen once, whoever races for it.

The operation's succeeded count is not written by the tenants' transactions
(a row every one of them would update, held to its commit, serialises the
commits): it is the number of this operation's SCHEMA_MIGRATED events,
recounted by RECOUNT_PROGRESS (exact and idempotent, whatever was retried).
"""

from __future__ import annotations

import uuid

from sqlalchemy import Select, bindparam, exists, select, text

from tenantry.db.events import event_ctes
from tenantry.db.models import Operation, RolloutFailure, Tenant, TenantEvent
from tenantry.db.tenants import PG_NAMESPACE, TENANT_REVISION_PATTERN
from tenantry.schema_names import quote_schema
from tenantry.states import OPEN_OPERATION_STATES, OperationKind, TenantEventType, TenantState

# Tenants whose schema a rollout upgrades: those whose data exists. A DELETING
# tenant keeps its data until its purge (an undelete brings it back as it was).
ROLLOUT_TENANT_STATES = (TenantState.ACTIVE, TenantState.SUSPENDED, TenantState.DELETING)
_LIVE = [str(state) for state in ROLLOUT_TENANT_STATES]
_OPS = Operation.__tablename__
_FAILURES = RolloutFailure.__tablename__

# The next tenants to upgrade after `after` (id order; '' from the start):
# live, at one of the revisions in `older`, not failed in this rollout yet;
# with the revision and schema they have now (what the one-round-trip upgrade
# expects, and its guard checks). Parameters `older` (list), `after` (uuid
# text or ''), `limit`, `workflow_id`.
NEXT_TENANTS = text(
    f"""
    SELECT t.id, t.state, t.schema_version, t.schema_name, t.shard FROM {Tenant.__tablename__} t
    WHERE t.state = ANY(CAST(:live AS varchar[])) AND t.schema_version = ANY(CAST(:older AS varchar[]))
      AND (CAST(:after AS text) = '' OR t.id > CAST(NULLIF(CAST(:after AS text), '') AS uuid))
      AND NOT EXISTS (SELECT 1 FROM {_FAILURES} f WHERE f.workflow_id = :workflow_id AND f.tenant_id = t.id)
    ORDER BY t.id
    LIMIT :limit
    """
).bindparams(live=_LIVE)

# The same for given tenants (a retry of busy ones). Parameter `ids` (uuid list).
TENANTS_BY_ID = text(
    f"SELECT id, state, schema_version, schema_name, shard FROM {Tenant.__tablename__} "
    "WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id"
)

# How many live tenants are below the target (parameter `older`).
COUNT_BELOW = text(
    f"SELECT count(*) FROM {Tenant.__tablename__} "
    "WHERE state = ANY(CAST(:live AS varchar[])) AND schema_version = ANY(CAST(:older AS varchar[]))"
).bindparams(live=_LIVE)

# The tenant's state, recorded revision and whether its schema exists, its
# row locked (parameter `tenant_id`).
LOCK_FOR_UPGRADE = (
    select(
        Tenant.state,
        Tenant.schema_version,
        Tenant.schema_name,
        exists().where(PG_NAMESPACE.c.nspname == Tenant.schema_name),
    )
    .where(Tenant.id == bindparam("tenant_id"))
    .with_for_update(of=Tenant)
)

# A tenant on another database: its state, recorded revision, schema, shard
# and whether it is moving, its row locked (parameter `tenant_id`). Whether
# the schema exists is asked on its shard.
LOCK_REMOTE_FOR_UPGRADE = (
    select(Tenant.state, Tenant.schema_version, Tenant.schema_name, Tenant.shard, Tenant.moving)
    .where(Tenant.id == bindparam("tenant_id"))
    .with_for_update(of=Tenant)
)

# LOCK_FOR_UPGRADE as the driver's SQL ($1 the tenant id), for the fast path.
LOCK_FOR_UPGRADE_SQL = (
    f"SELECT t.state, t.schema_version, t.schema_name, "
    f"EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = t.schema_name) "
    f"FROM {Tenant.__tablename__} t WHERE t.id = $1 FOR UPDATE OF t"
)
# Raised by stamp_guard: the schema's own stamp is not what the row records.
VERSION_MISMATCH_SQLSTATE = "TN001"


def _literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings, PostgreSQL's default since 9.1)."""
    if "\x00" in value:
        raise ValueError("NUL in a SQL literal")
    return "'" + value.replace("'", "''") + "'"


def stamp_guard(schema: str, recorded: str) -> str:
    """A statement that fails with VERSION_MISMATCH_SQLSTATE unless `schema`'s
    alembic stamp is `recorded` (a tenant schema name and a revision id)."""
    if not TENANT_REVISION_PATTERN.fullmatch(recorded):
        raise ValueError(f"not a tenant revision id: {recorded!r}")
    return (
        "DO $guard$ BEGIN IF NOT EXISTS (SELECT 1 FROM "
        f"{quote_schema(schema)}.alembic_version WHERE version_num = '{recorded}') THEN "
        f"RAISE EXCEPTION USING ERRCODE = '{VERSION_MISMATCH_SQLSTATE}', "
        "MESSAGE = 'schema stamp differs from the tenant row'; END IF; END $guard$;"
    )


# Raised by row_guard when the tenant is not as the batch read it: the
# upgrade falls back to the careful path, which tells why.
GUARD_SQLSTATE = "22012"  # division_by_zero


def row_guard(tenant_id: uuid.UUID, schema: str, recorded: str, state: TenantState) -> str:
    """One plain statement (nothing to compile per call, unlike a DO block)
    that locks the tenant row and fails with GUARD_SQLSTATE unless the tenant
    is still in `state` (a live one), still records `recorded`, and its
    schema's own alembic stamp is `recorded`. The row is checked after its lock is granted (a concurrent
    upgrade's commit is seen: READ COMMITTED re-checks a locked row's newest
    version), so an upgrade the guard lets through is the only one. A missing
    schema fails too (undefined table)."""
    if not isinstance(tenant_id, uuid.UUID) or not TENANT_REVISION_PATTERN.fullmatch(recorded):
        raise ValueError("a tenant id and a revision id are required")
    if state not in ROLLOUT_TENANT_STATES:
        raise ValueError(f"not a state a rollout upgrades: {state}")
    return (
        "SELECT 1 / ((SELECT count(*) FROM (SELECT 1 FROM "
        f"{Tenant.__tablename__} t WHERE t.id = '{tenant_id}' AND t.state = '{state.value}' "
        f"AND t.schema_version = '{recorded}' FOR UPDATE OF t) AS locked) * (SELECT count(*) FROM "
        f"{quote_schema(schema)}.alembic_version WHERE version_num = '{recorded}'))"
    )


def upgraded_statement(tenant_id: uuid.UUID, revision: str, workflow_id: str, state: TenantState, actor: str) -> str:
    """STAMP_UPGRADED and the tenant's SCHEMA_MIGRATED event as one statement
    with its values inlined (it runs in a multi-statement script): the tenant
    row, then the event counter, last."""
    if not isinstance(tenant_id, uuid.UUID) or not TENANT_REVISION_PATTERN.fullmatch(revision):
        raise ValueError("a tenant id and a revision id are required")
    operation = _literal(workflow_id)
    events = event_ctes(
        after="tenant",
        tenant_id=f"CAST('{tenant_id}' AS uuid)",
        type=TenantEventType.SCHEMA_MIGRATED,
        state=state,
        actor=f"CAST({_literal(actor)} AS text)",
        operation=f"CAST({operation} AS varchar)",
    )
    return f"""
    WITH tenant AS (
        UPDATE {Tenant.__tablename__}
        SET schema_version = '{revision}', update_time = now(), version = version + 1
        WHERE id = '{tenant_id}'
        RETURNING id
    ), {events}
    SELECT 1 FROM tenant"""


# The new revision on the tenant row. Parameters `tenant_id`, `revision`.
STAMP_UPGRADED = text(
    f"""
    UPDATE {Tenant.__tablename__}
    SET schema_version = CAST(:revision AS varchar), update_time = now(), version = version + 1
    WHERE id = CAST(:tenant_id AS uuid)
    """
)

# This operation's upgraded tenants: its SCHEMA_MIGRATED events (one per
# upgrade, committed with it; index ix_tenant_events_schema_migrated_operation).
_SUCCEEDED = (
    f"(SELECT count(*) FROM {TenantEvent.__tablename__} "
    f"WHERE type = '{TenantEventType.SCHEMA_MIGRATED.value}' AND operation = CAST(:workflow_id AS varchar))"
)

# The succeeded count recounted (idempotent); returns the progress.
# Parameter `workflow_id`.
RECOUNT_PROGRESS = text(
    f"""
    UPDATE {_OPS} SET progress_succeeded = {_SUCCEEDED}, update_time = now()
    WHERE workflow_id = CAST(:workflow_id AS varchar)
    RETURNING progress_succeeded, progress_failed
    """
)

# A failed tenant with its reason, counted once per rollout. Parameters
# `workflow_id`, `tenant_id`, `reason`.
RECORD_FAILURE = text(
    f"""
    WITH failure AS (
        INSERT INTO {_FAILURES} (workflow_id, tenant_id, reason)
        VALUES (CAST(:workflow_id AS varchar), CAST(:tenant_id AS uuid), CAST(:reason AS text))
        ON CONFLICT (workflow_id, tenant_id) DO NOTHING
        RETURNING tenant_id
    )
    UPDATE {_OPS} SET progress_failed = progress_failed + 1, update_time = now()
    WHERE workflow_id = CAST(:workflow_id AS varchar) AND EXISTS (SELECT 1 FROM failure)
    """
)

# The operation's progress (parameter `workflow_id`).
PROGRESS = select(
    Operation.state, Operation.progress_total, Operation.progress_succeeded, Operation.progress_failed
).where(Operation.workflow_id == bindparam("workflow_id"))

# total = tenants done so far + those still below the target (failed ones
# included: they still are). Parameters `workflow_id`, `older`.
SET_TOTAL = text(
    f"""
    UPDATE {_OPS} SET progress_succeeded = {_SUCCEEDED},
        progress_total = {_SUCCEEDED} + ({COUNT_BELOW.text}), update_time = now()
    WHERE workflow_id = CAST(:workflow_id AS varchar)
    RETURNING progress_total
    """
).bindparams(live=_LIVE)

# The open rollout, if any.
OPEN_ROLLOUT = select(Operation.workflow_id, Operation.target_revision).where(
    Operation.kind == OperationKind.MIGRATE, Operation.state.in_(OPEN_OPERATION_STATES)
)


def failures_of(workflow_id: str) -> Select[uuid.UUID, str]:
    """The rollout's failed tenants and reasons, in the order they failed."""
    return (
        select(RolloutFailure.tenant_id, RolloutFailure.reason)
        .where(RolloutFailure.workflow_id == workflow_id)
        .order_by(RolloutFailure.create_time, RolloutFailure.tenant_id)
    )

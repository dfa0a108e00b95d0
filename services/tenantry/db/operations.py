"""The operation aggregate's statements: the RUNNING mark, state transitions,
the one-open-lifecycle-operation rule, and the reconciler's scans."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import Select, Update, bindparam, insert, select, text, update
from sqlalchemy.sql.dml import ReturningInsert

from tenantry.db.models import Operation, Tenant
from tenantry.states import (
    DONE_OPERATION_STATES,
    LIFECYCLE_OPERATION_KINDS,
    OPEN_OPERATION_STATES,
    OperationKind,
    OperationState,
    TenantState,
)
from tenantry.tracing import current_trace_id

# The partial unique index that keeps a tenant to one open (PENDING or
# RUNNING) lifecycle operation (models.Operation).
OPEN_LIFECYCLE_INDEX = "uq_workflow_executions_open_lifecycle"

# The RUNNING mark, written by the worker as the first statement of a
# workflow's first activity (so the API answers PENDING: it never waits for
# it). Bookkeeping that commits asynchronously (synchronous_commit off for its
# own transaction only, set_config(..., true)): it does not wait for a WAL
# flush. A database crash can lose it, and only it (WAL is replayed in order:
# nothing committed after it survives either); the operation then looks
# PENDING until the activity's own transaction finishes it.
# One statement, meant for autocommit; parameter `workflow_id`; returns the
# start time, or no row when the operation was no longer PENDING.
MARK_RUNNING = text(
    f"""
    WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
    UPDATE {Operation.__tablename__}
    SET state = '{OperationState.RUNNING}', start_time = now(), update_time = now()
    FROM async_commit
    WHERE workflow_id = CAST(:workflow_id AS varchar) AND state = '{OperationState.PENDING}'
    RETURNING start_time
    """
)


def transition(
    workflow_id: str, from_states: Iterable[OperationState], to_state: OperationState, error_message: str = ""
) -> Update:
    """Moves the operation to `to_state` if it is in one of `from_states` (the
    result's rowcount says whether it was). A final state records the end time;
    any other clears it."""
    end_time = text("now()") if to_state in DONE_OPERATION_STATES else None
    return (
        update(Operation)
        .where(Operation.workflow_id == workflow_id)
        .where(Operation.state.in_(tuple(from_states)))
        .values(state=to_state, error_message=error_message, end_time=end_time, update_time=text("now()"))
    )


# Operations in state `state` not updated for `age` seconds (the parameters), oldest first, with
# what the reconciler needs to judge and restart them.
STALE_OPERATIONS = (
    select(
        Operation.workflow_id,
        Operation.kind,
        Operation.tenant_id,
        Tenant.admin_user_id,
        Tenant.state,
        # A MOVE's shards ("" for every other kind): its workflow's input.
        Operation.source_shard,
        Operation.target_shard,
    )
    # An inner join: a fleet rollout (MIGRATE, no tenant) is never restarted
    # by the reconciler; `tenantry-migrate tenants` re-attaches to it.
    .join(Tenant, Tenant.id == Operation.tenant_id)
    .where(Operation.state == bindparam("state"))
    .where(Operation.update_time < text("now() - make_interval(secs => :age)"))
    .order_by(Operation.create_time)
    .limit(500)
)


def insert_pending(
    workflow_id: str,
    tenant_id: uuid.UUID,
    kind: OperationKind,
    request_id: uuid.UUID | None,
    actor: str,
    *,
    source_shard: str = "",
    target_shard: str = "",
) -> ReturningInsert[Operation]:
    """A new PENDING operation, returned; a reused request_id violates
    uq_workflow_executions_request_id. It records the current trace id ("" when not tracing)
    and, for a MOVE, its two shards."""
    return (
        insert(Operation)
        .values(
            workflow_id=workflow_id,
            tenant_id=tenant_id,
            kind=kind,
            state=OperationState.PENDING,
            request_id=request_id,
            actor=actor,
            trace_id=current_trace_id(),
            source_shard=source_shard,
            target_shard=target_shard,
        )
        .returning(Operation)
    )


def cancel_open(tenant_id: uuid.UUID, kind: OperationKind, message: str) -> Update:
    """Closes the tenant's open operations of `kind` as CANCELLED (a deletion
    supersedes provisioning)."""
    return (
        update(Operation)
        .where(Operation.tenant_id == tenant_id, Operation.kind == kind)
        .where(Operation.state.in_(OPEN_OPERATION_STATES))
        .values(
            state=OperationState.CANCELLED, error_message=message, end_time=text("now()"), update_time=text("now()")
        )
    )


def open_lifecycle_operation(tenant_id: uuid.UUID) -> Select[str]:
    """The workflow id of the tenant's open lifecycle operation, if any."""
    return (
        select(Operation.workflow_id)
        .where(Operation.tenant_id == tenant_id, Operation.kind.in_(LIFECYCLE_OPERATION_KINDS))
        .where(Operation.state.in_(OPEN_OPERATION_STATES))
    )


def latest(tenant_id: uuid.UUID, kind: OperationKind) -> Select[Operation]:
    """The tenant's most recent operation of `kind` (for a session)."""
    return select(Operation).where(Operation.workflow_id == latest_id(tenant_id, kind).scalar_subquery())


def latest_id(tenant_id: uuid.UUID, kind: OperationKind) -> Select[str]:
    """The workflow id of the tenant's most recent operation of `kind`."""
    return (
        select(Operation.workflow_id)
        .where(Operation.tenant_id == tenant_id, Operation.kind == kind)
        .order_by(Operation.create_time.desc())
        .limit(1)
    )


# Deletions whose purge is overdue by more than `age` seconds while their
# workflow should have woken (a PurgeTenant whose signal never arrived).
OVERDUE_PURGES = (
    select(Operation.workflow_id)
    .join(Tenant, Tenant.id == Operation.tenant_id)
    .where(Operation.kind == OperationKind.DELETE, Operation.state == OperationState.RUNNING)
    .where(Tenant.state == TenantState.DELETING)
    .where(Tenant.purge_time < text("now() - make_interval(secs => :age)"))
    .order_by(Tenant.purge_time)
    .limit(500)
)


def state_of(workflow_id: str) -> Select[str]:
    return select(Operation.state).where(Operation.workflow_id == workflow_id)


def actor_of(workflow_id: str) -> Select[str]:
    """Who started the operation (its workflow acts on their behalf)."""
    return select(Operation.actor).where(Operation.workflow_id == workflow_id)


def tenant_kind_state_of(workflow_id: str) -> Select[uuid.UUID | None, str, str]:
    """The operation's tenant, kind and state (no row: no such operation)."""
    return select(Operation.tenant_id, Operation.kind, Operation.state).where(Operation.workflow_id == workflow_id)

"""Activities: every one is idempotent and does its database work in one
transaction, so a retry after a crash at any point converges. A tenant on a
remote shard (TENANTRY_SHARDS) has two: its schema work on the shard commits
first, then the control plane's (tenantry.db.shards' two-database protocol),
and each step finds its own shard work already done when that commit was the
one a crash lost.

State changes are conditional on the expected state, and the step that
creates anything first locks the tenant row and checks it is still CREATING:
DeleteTenant's soft delete (an UPDATE of that row) therefore either happens
before that step, which then refuses, or waits for it to commit, in which case
the deletion workflow cleans up what it created.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError
from temporalio.service import RPCError, RPCStatusCode

from provisioner_worker.metrics import DELETION_SECONDS, PROVISIONING_SECONDS
from tenantry.db import operations as operation_sql
from tenantry.db import tenants as tenant_sql
from tenantry.db.engine import driver_of
from tenantry.db.events import SYSTEM_WORKER, EventRecord, append_event
from tenantry.db.shards import Shard, Shards, UnknownShardError, shard_transaction
from tenantry.db.timeouts import bound_lock_waits
from tenantry.migrations import tenant_head_revision, tenant_schema_script, upgrade_tenant_schema
from tenantry.pg_errors import FOREIGN_KEY_VIOLATION, pg_error
from tenantry.schema_names import schema_name_for
from tenantry.states import OPEN_OPERATION_STATES, OperationKind, OperationState, TenantEventType, TenantState
from tenantry.workflow_contract import TEMPORAL_CALL_TIMEOUT, ProvisionTenantInput

log = logging.getLogger(__name__)

# Error types the workflows branch on.
TENANT_NOT_PROVISIONABLE = "TenantNotProvisionable"
TENANT_NOT_FOUND = "TenantNotFound"
MEMBERSHIP_REFERENCE_MISSING = "MembershipReferenceMissing"
TENANT_NOT_DELETABLE = "TenantNotDeletable"
DELETION_NOT_REQUESTED = "DeletionNotRequested"
# Retryable: the tenant's shard is missing from this worker's TENANTRY_SHARDS.
SHARD_NOT_CONFIGURED = "ShardNotConfigured"

# Alembic's `op` and `context` are process-global proxies: two tenant upgrades
# interleaving on this event loop would run one tenant's DDL on the other's
# connection. Upgrades of existing schemas run one at a time per process (a new
# schema is one script that needs no alembic at all: tenant_schema_script).
_TENANT_UPGRADE_LOCK = asyncio.Lock()


@dataclass(frozen=True)
class TenantActivityInput:
    tenant_id: str


@dataclass(frozen=True)
class PurgeOutcome:
    """`done`: the deletion is over, by a purge (`purged`) or an undelete.
    Otherwise the purge is due in `seconds_left`."""

    done: bool
    purged: bool = False
    seconds_left: float = 0.0


# Why provisioning failed, as clients see it: a stable reason and a short
# message, stored as "<REASON>: <message>" in the tenant's state_message and
# the operation's error_message. The cause itself (an exception's text, which
# for a database error holds the SQL and its parameter values) goes to the
# worker's log only.
PROVISIONING_FAILED = "PROVISIONING_FAILED"
PROVISIONING_TIMED_OUT = "PROVISIONING_TIMED_OUT"
MEMBERSHIP_REFERENCE_MISSING_REASON = "MEMBERSHIP_REFERENCE_MISSING"
FAILURE_MESSAGES = {
    PROVISIONING_FAILED: "the tenant could not be provisioned",
    PROVISIONING_TIMED_OUT: "provisioning did not finish in time",
    MEMBERSHIP_REFERENCE_MISSING_REASON: "the admin membership references a user or tenant that does not exist",
}


def provisioning_failure_reason(cause: BaseException | None) -> str:
    """The stable reason for a provisioning step's failure (pure: the
    workflow calls it)."""
    if isinstance(cause, ApplicationError) and cause.type == MEMBERSHIP_REFERENCE_MISSING:
        return MEMBERSHIP_REFERENCE_MISSING_REASON
    if isinstance(cause, TemporalTimeoutError):
        return PROVISIONING_TIMED_OUT
    return PROVISIONING_FAILED


def failure_detail(error: BaseException) -> str:
    """An activity failure's messages down its cause chain (the database
    error under an ApplicationError raised from it), for the worker's log.
    Pure: the workflow calls it."""
    messages: list[str] = []
    current: BaseException | None = error
    while current is not None and len(messages) < 10:
        messages.append(f"{type(current).__name__}: {current}")
        current = getattr(current, "cause", None) or current.__cause__
    return " <- ".join(messages)


def failure_text(reason: str) -> str:
    """What clients see for `reason`; an unknown reason is reported as the
    generic one, so no free text ever reaches them."""
    if reason not in FAILURE_MESSAGES:
        reason = PROVISIONING_FAILED
    return f"{reason}: {FAILURE_MESSAGES[reason]}"


@dataclass(frozen=True)
class FailProvisioningInput:
    tenant_id: str
    # The cause's text, for the worker's log only: never stored or shown.
    # (Its name is kept so inputs recorded by earlier versions still decode.)
    error_message: str = ""
    # One of FAILURE_MESSAGES' keys: what the tenant and operation record.
    reason: str = PROVISIONING_FAILED


async def _lock_tenant_state(conn: AsyncConnection, tenant_id: uuid.UUID) -> tuple[str, str]:
    """The tenant's state and shard, with its row locked until the transaction ends."""
    row = (await conn.execute(tenant_sql.LOCK_STATE, {"tenant_id": tenant_id})).one_or_none()
    if row is None:
        raise ApplicationError(f"tenant {tenant_id} not found", type=TENANT_NOT_FOUND, non_retryable=True)
    return row.state, row.shard


async def _finish_operation(
    conn: AsyncConnection, workflow_id: str, state: OperationState, error_message: str = ""
) -> None:
    await conn.execute(operation_sql.transition(workflow_id, OPEN_OPERATION_STATES, state, error_message))


async def _run_script(conn: AsyncConnection, script: str) -> None:
    """Several statements in one round trip, in `conn`'s transaction: the
    driver's simple query protocol (SQLAlchemy prepares, one statement at a time)."""
    driver = await driver_of(conn)
    if not driver.is_in_transaction():
        raise RuntimeError("a script must run inside the caller's transaction")
    await driver.execute(script)


async def _append_event(
    conn: AsyncConnection, tenant_id: uuid.UUID, type: TenantEventType, state: TenantState, workflow_id: str
) -> None:
    """The event of a change the workflow made, on behalf of whoever started
    its operation. The transaction's last statement (see tenantry.db.events)."""
    actor = await conn.scalar(operation_sql.actor_of(workflow_id))
    await append_event(conn, EventRecord(tenant_id, type, state, actor or SYSTEM_WORKER, workflow_id))


def _deletion_not_requested(workflow_id: str, reason: str) -> ApplicationError:
    log.warning("deletion workflow refused: %s", reason, extra={"workflow_id": workflow_id})
    return ApplicationError(
        f"deletion refused: {reason}; deletions start through DeleteTenant",
        type=DELETION_NOT_REQUESTED,
        non_retryable=True,
    )


class TenantActivities:
    """Activities for provisioning and deletion; holds the engine and the Temporal client."""

    def __init__(self, engine: AsyncEngine, client: Client, shards: Shards | None = None) -> None:
        self._engine = engine
        self._shards = shards or Shards.single(engine)
        self._client = client

    @activity.defn(name="provision_tenant")
    async def provision_tenant(self, input: ProvisionTenantInput) -> None:
        """Everything provisioning creates: the schema with the tenant lineage
        and its version stamp on the tenant's shard; the admin membership,
        ACTIVE and the operation SUCCEEDED in the control plane. On a local
        shard that is one transaction: PostgreSQL DDL is transactional, so a
        crash at any point leaves nothing behind and the retry starts clean.
        On a remote shard the two-database protocol (tenantry.db.shards): the
        schema commits first, then the control plane; a retry after a crash
        between the two finds the schema at its stamp and only finishes the
        control-plane part (alembic's upgrade of a schema at head changes
        nothing)."""
        tenant_id, user_id = uuid.UUID(input.tenant_id), uuid.UUID(input.admin_user_id)
        schema = schema_name_for(tenant_id)
        workflow_id = current_workflow_id()
        await self._mark_running(workflow_id)
        try:
            async with self._engine.begin() as conn:
                await bound_lock_waits(conn)
                # The row lock serialises concurrent attempts for this tenant
                # (so whether the schema exists stays true until we commit) and
                # orders us against DeleteTenant's soft delete.
                row = (
                    await conn.execute(tenant_sql.LOCK_FOR_PROVISIONING, {"locked_tenant_id": tenant_id})
                ).one_or_none()
                if row is None:
                    raise ApplicationError(f"tenant {tenant_id} not found", type=TENANT_NOT_FOUND, non_retryable=True)
                state, schema_exists, shard_name = row
                if state == TenantState.ACTIVE:
                    # An earlier attempt committed; only its acknowledgement was lost.
                    await _finish_operation(conn, workflow_id, OperationState.SUCCEEDED)
                    return
                if state != TenantState.CREATING:
                    # Deleted meanwhile: nothing is created, on any shard.
                    raise ApplicationError(
                        f"tenant {tenant_id} is {state}, not CREATING",
                        type=TENANT_NOT_PROVISIONABLE,
                        non_retryable=True,
                    )
                shard = self._shard(shard_name)
                async with shard_transaction(conn, shard) as shard_conn:
                    if not shard.local:
                        await bound_lock_waits(shard_conn)
                        schema_exists = bool(await shard_conn.scalar(tenant_sql.schema_exists(schema)))
                    if schema_exists:
                        # Left by an attempt whose control-plane commit was
                        # lost, by hand or by an older worker: alembic brings
                        # it to head (nothing to do when it is there already).
                        async with _TENANT_UPGRADE_LOCK:
                            await shard_conn.run_sync(upgrade_tenant_schema, schema)
                    else:
                        await _run_script(shard_conn, tenant_schema_script(schema))
                elapsed = await conn.scalar(
                    tenant_sql.ACTIVATE,
                    {
                        "tenant_id": tenant_id,
                        "user_id": user_id,
                        "workflow_id": workflow_id,
                        "schema_version": tenant_head_revision(),
                    },
                )
        except IntegrityError as exc:
            error = pg_error(exc)
            if error.sqlstate == FOREIGN_KEY_VIOLATION:
                raise ApplicationError(
                    f"membership references a missing row ({error.constraint_name})",
                    type=MEMBERSHIP_REFERENCE_MISSING,
                    non_retryable=True,
                ) from exc
            raise
        PROVISIONING_SECONDS.labels("succeeded").observe(float(elapsed or 0))

    @activity.defn(name="fail_provisioning")
    async def fail_provisioning(self, input: FailProvisioningInput) -> None:
        """Compensation: drop what was created (on the tenant's shard: that
        commits first, and a retry finds the schema gone), tenant FAILED,
        operation FAILED."""
        tenant_id = uuid.UUID(input.tenant_id)
        message = failure_text(input.reason)
        log.warning("provisioning of tenant %s failed (%s): %s", tenant_id, input.reason, input.error_message)
        async with self._engine.begin() as conn:
            await bound_lock_waits(conn)
            state, shard_name = await _lock_tenant_state(conn, tenant_id)
            if state != TenantState.CREATING:
                return  # deleted meanwhile: the deletion workflow owns the cleanup
            shard = self._shard(shard_name)
            async with shard_transaction(conn, shard) as shard_conn:
                if not shard.local:
                    await bound_lock_waits(shard_conn)
                await shard_conn.execute(tenant_sql.drop_schema(tenant_id))
            await conn.execute(tenant_sql.revoke_memberships(tenant_id))
            elapsed = await conn.scalar(tenant_sql.mark_failed(tenant_id, message))
            workflow_id = current_workflow_id()
            await _finish_operation(conn, workflow_id, OperationState.FAILED, message)
            await _append_event(conn, tenant_id, TenantEventType.PROVISIONING_FAILED, TenantState.FAILED, workflow_id)
        PROVISIONING_SECONDS.labels("failed").observe(float(elapsed or 0))

    @activity.defn(name="check_deletion_requested")
    async def check_deletion_requested(self, input: TenantActivityInput) -> None:
        """Anyone who can reach Temporal can start a deletion workflow; only
        DeleteTenant (or the reconciler re-driving it) means one. Passes when
        the calling workflow's id is an open DELETE operation of this tenant and
        the tenant is DELETING (or already DELETED), and then marks the
        operation RUNNING; otherwise a non-retryable DELETION_NOT_REQUESTED
        error, before anything is cancelled or dropped."""
        workflow_id = current_workflow_id()
        try:
            tenant_id = uuid.UUID(input.tenant_id)
        except ValueError:
            raise _deletion_not_requested(workflow_id, f"{input.tenant_id!r} is not a tenant id") from None
        async with self._engine.connect() as conn:
            tenant_state = (await conn.execute(tenant_sql.state_of(tenant_id))).scalars().one_or_none()
            operation = (await conn.execute(operation_sql.tenant_kind_state_of(workflow_id))).one_or_none()
        if tenant_state not in (TenantState.DELETING, TenantState.DELETED):
            raise _deletion_not_requested(
                workflow_id, f"tenant {tenant_id} is {tenant_state or 'unknown'}, not DELETING"
            )
        if operation is None or operation.tenant_id != tenant_id or operation.kind != OperationKind.DELETE:
            raise _deletion_not_requested(workflow_id, f"no DELETE operation {workflow_id} for tenant {tenant_id}")
        if operation.state not in OPEN_OPERATION_STATES:
            raise _deletion_not_requested(workflow_id, f"operation {workflow_id} is already {operation.state}")
        await self._mark_running(workflow_id)

    @activity.defn(name="cancel_provisioning")
    async def cancel_provisioning(self, input: TenantActivityInput) -> None:
        """Cancels the tenant's latest provisioning workflow if it still runs
        and waits until it closed; its operation ends CANCELLED (DeleteTenant
        already closed it in its transaction; deletions recorded by earlier
        releases did not)."""
        tenant_id = uuid.UUID(input.tenant_id)
        async with self._engine.connect() as conn:
            provisioning = await conn.scalar(operation_sql.latest_id(tenant_id, OperationKind.PROVISION))
        if provisioning is None:
            return
        handle = self._client.get_workflow_handle(provisioning)
        cancel_requested = False
        while True:
            try:
                description = await handle.describe(rpc_timeout=TEMPORAL_CALL_TIMEOUT)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                break
            if description.status != WorkflowExecutionStatus.RUNNING:
                break
            if not cancel_requested:
                await handle.cancel(rpc_timeout=TEMPORAL_CALL_TIMEOUT)
                cancel_requested = True
            await asyncio.sleep(0.2)
        async with self._engine.begin() as conn:
            await bound_lock_waits(conn)
            await _finish_operation(conn, provisioning, OperationState.CANCELLED)

    @activity.defn(name="purge_tenant")
    async def purge_tenant(self, input: TenantActivityInput) -> None:
        """The purge of deletion workflows recorded before retention existed
        (they purge at once): see `purge_when_due`."""
        await self._purge(uuid.UUID(input.tenant_id), current_workflow_id(), when_due=False)

    @activity.defn(name="purge_when_due")
    async def purge_when_due(self, input: TenantActivityInput) -> PurgeOutcome:
        """Purges the tenant if its purge is due (`purge_time` reached, by the
        database's clock) and its deletion is still on: drop the schema, revoke
        memberships, tenant DELETED, operation SUCCEEDED, PURGED event, in one
        transaction under the tenant's row lock. An undelete takes the same
        lock and cancels the operation, so exactly one of them wins. Not due
        yet: how long to wait. Undone (operation no longer open): done."""
        return await self._purge(uuid.UUID(input.tenant_id), current_workflow_id(), when_due=True)

    async def _purge(self, tenant_id: uuid.UUID, workflow_id: str, *, when_due: bool) -> PurgeOutcome:
        elapsed = None
        async with self._engine.begin() as conn:
            await bound_lock_waits(conn)
            row = (await conn.execute(tenant_sql.LOCK_FOR_PURGE, {"tenant_id": tenant_id})).one_or_none()
            if row is None:
                raise ApplicationError(f"tenant {tenant_id} not found", type=TENANT_NOT_FOUND, non_retryable=True)
            state, seconds_left, shard_name = row
            operation_state = await conn.scalar(operation_sql.state_of(workflow_id))
            if operation_state not in OPEN_OPERATION_STATES:
                # Undeleted (CANCELLED), or an earlier attempt committed (SUCCEEDED).
                return PurgeOutcome(done=True, purged=operation_state == OperationState.SUCCEEDED)
            if state == TenantState.DELETED:
                await _finish_operation(conn, workflow_id, OperationState.SUCCEEDED)
                return PurgeOutcome(done=True, purged=True)
            if state != TenantState.DELETING:
                raise ApplicationError(
                    f"tenant {tenant_id} is {state}, not DELETING", type=TENANT_NOT_DELETABLE, non_retryable=True
                )
            if when_due and seconds_left > 0:
                return PurgeOutcome(done=False, seconds_left=float(seconds_left))
            # On a remote shard the drop commits before the control plane
            # says DELETED. Safe: an undelete needs a purge_time still ahead
            # of the clock (this one is due) and a state_before_delete (a
            # deletion recorded before retention, purged by `purge_tenant`
            # whenever it runs, has none), so none can win after this point;
            # a retry finds the schema gone and only finishes the
            # control-plane part.
            shard = self._shard(shard_name)
            async with shard_transaction(conn, shard) as shard_conn:
                # Waits for in-flight tenant queries, but never forever.
                await shard_conn.execute(text("SET LOCAL lock_timeout = '10s'"))
                await shard_conn.execute(tenant_sql.drop_schema(tenant_id))
            await conn.execute(tenant_sql.revoke_memberships(tenant_id))
            await _finish_operation(conn, workflow_id, OperationState.SUCCEEDED)
            elapsed = await conn.scalar(tenant_sql.mark_deleted(tenant_id))
            await _append_event(conn, tenant_id, TenantEventType.PURGED, TenantState.DELETED, workflow_id)
        if elapsed is not None:
            DELETION_SECONDS.labels("succeeded").observe(float(elapsed))
        return PurgeOutcome(done=True, purged=True)

    def _shard(self, name: str) -> Shard:
        """The tenant's shard. One this worker does not know (TENANTRY_SHARDS
        differs between processes) fails the attempt, retryably: the step goes
        on once the worker is configured like the API."""
        try:
            return self._shards[name]
        except UnknownShardError as exc:
            log.error("tenant on shard %r, which this worker's TENANTRY_SHARDS does not list", name)
            raise ApplicationError(str(exc), type=SHARD_NOT_CONFIGURED) from exc

    async def _mark_running(self, workflow_id: str) -> None:
        """The worker's first statement for an operation: PENDING -> RUNNING
        (a retry or a later step finds it RUNNING already: no change).
        Bookkeeping: a failure is logged, never fails the step, whose own
        transaction finishes the operation from PENDING as well."""
        try:
            async with self._engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(operation_sql.MARK_RUNNING, {"workflow_id": workflow_id})
        except DBAPIError as exc:
            log.warning("could not mark operation %s RUNNING: %s", workflow_id, type(exc).__name__)


def current_workflow_id() -> str:
    """The calling workflow's id: the id of the operation the activity works for."""
    return activity.info().workflow_id or ""

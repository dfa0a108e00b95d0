"""TenantService logic: registration, lookup, listing, soft deletion and its
undo (undelete, purge), retried provisioning, and the synchronous changes
(update, suspend, resume).

Discipline shared by the calls that start a workflow (RegisterTenant,
DeleteTenant, RetryTenantProvisioning): write the change and its PENDING
operation atomically (one transaction, or one statement), commit, and only then
start the workflow. A start that fails leaves a PENDING operation the
reconciler picks up; the worker's first activity marks it RUNNING.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tenant_api import pagination
from tenant_api.convert import operation_to_proto, tenant_etag, tenant_to_proto
from tenant_api.errors import ApiError, aborted, already_exists, failed_precondition, invalid_field, not_found
from tenant_api.operations import OPERATION_NAME_PREFIX
from tenant_api.tenant_changes import TenantFilter, TenantUpdate
from tenant_api.tenant_gate import connection_lost, shard_unavailable
from tenant_api.validation import RegistrationInput
from tenantry.db import admission
from tenantry.db import operations as operation_sql
from tenantry.db import tenants as tenant_sql
from tenantry.db.events import EventRecord, append_event
from tenantry.db.models import Operation, RequestRecord, Tenant
from tenantry.db.shards import Shards, UnknownShardError
from tenantry.db.tenants import TenantWithOperation
from tenantry.operation_starter import OperationRef, OperationStarter
from tenantry.pg_errors import UNDEFINED_TABLE, UNIQUE_VIOLATION, pg_error
from tenantry.settings import DEFAULT_DELETION_RETENTION_SECONDS, SHARD_NAME_PATTERN
from tenantry.states import (
    DELETABLE_TENANT_STATES,
    GONE_TENANT_STATES,
    OPEN_OPERATION_STATES,
    RETAINED_TENANT_STATES,
    OperationKind,
    OperationState,
    TenantEventType,
    TenantState,
)
from tenantry.v1 import tenant_pb2, tenant_service_pb2
from tenantry.workflow_contract import new_workflow_id

log = logging.getLogger(__name__)

NO_FILTER = TenantFilter(frozenset(), {})
# MoveTenant moves tenants that can serve (a move does not care which of the two).
MOVABLE_TENANT_STATES = frozenset({TenantState.ACTIVE, TenantState.SUSPENDED})
# UpdateTenant changes names and labels of any tenant not (being) deleted.
UPDATABLE_TENANT_STATES = frozenset(TenantState) - GONE_TENANT_STATES
# An UPDATE ... RETURNING of a row already in the session's identity map (locked
# above): without populate_existing it hands back the stale pre-update object.
_REFRESH = {"synchronize_session": False, "populate_existing": True}


def _wrong_state(tenant_id: uuid.UUID, state: str) -> ApiError:
    return failed_precondition(
        "WRONG_TENANT_STATE", f"tenant {tenant_id} is {state}", tenant_id=str(tenant_id), state=str(state)
    )


def _check_etag(tenant: Tenant, etag: str) -> None:
    """An etag given (AIP-154) must be the tenant's current one: a stale one,
    or another tenant's, is ABORTED before anything is written."""
    if etag and etag != tenant_etag(tenant):
        raise aborted(
            "ETAG_MISMATCH",
            f"tenant {tenant.id} changed since etag {etag} was read; read it again",
            tenant_id=str(tenant.id),
        )


# Listing order: registration time, then id (ix_tenants_create_time_id).
_KEYSET: pagination.Keyset[tuple[Tenant, str], uuid.UUID] = pagination.Keyset(
    Tenant.create_time, Tenant.id, uuid.UUID, lambda row: (row[0].create_time, row[0].id)
)


class Tenants:
    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        starter: OperationStarter,
        page_tokens: pagination.PageTokens,
        retention: timedelta = timedelta(seconds=DEFAULT_DELETION_RETENTION_SECONDS),
        shards: Shards | None = None,
    ) -> None:
        """`retention`: how long DeleteTenant keeps an ACTIVE or SUSPENDED
        tenant's data (TENANTRY_DELETION_RETENTION_SECONDS). `shards`: where
        new tenants may be placed (TENANTRY_SHARDS; None: the one default)."""
        self._shards = shards or Shards.single(engine)
        self._engine = engine
        self._sessions = sessions
        self._starter = starter
        self._page_tokens = page_tokens
        self._retention = retention

    async def register(self, request: RegistrationInput, actor: str) -> TenantWithOperation:
        # No pre-read of request_id: a replay collides on the slug (or the
        # request_id) and is resolved below, so first attempts pay nothing.
        if request.shard is not None and request.shard not in self._shards:
            raise invalid_field("shard", "not a configured shard")
        try:
            async with self._engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                registered = await tenant_sql.register(
                    conn,
                    tenant_id=uuid.uuid4(),
                    slug=request.slug,
                    display_name=request.display_name,
                    admin_email=request.admin_email,
                    admin_display_name=request.admin_display_name,
                    request_id=request.request_id,
                    actor=actor,
                    labels=request.labels,
                    shards=(request.shard,) if request.shard is not None else self._shards.names,
                )
        except IntegrityError as exc:
            # A replay, or a concurrent call with the same request_id, won the slug.
            if request.request_id is not None:
                earlier = await self._by_request_id(request.request_id, OperationKind.PROVISION)
                if earlier is not None:
                    return await self._ensure_started(earlier)
            error = pg_error(exc)
            if error.sqlstate == UNIQUE_VIOLATION and error.constraint_name == tenant_sql.SLUG_UNIQUE_CONSTRAINT:
                raise already_exists("TENANT_SLUG_TAKEN", f"slug {request.slug!r} is taken", slug=request.slug) from exc
            raise
        return await self._ensure_started(registered)

    async def get(self, tenant_id: uuid.UUID | None, slug: str | None) -> tuple[Tenant, str]:
        everyone = tenant_sql.with_admin_email()
        query = (
            everyone.where(Tenant.id == tenant_id)
            if tenant_id is not None
            else tenant_sql.holder_of_slug(everyone, slug)
        )
        async with self._sessions() as session:
            row = (await session.execute(query)).one_or_none()
        if row is None:
            ref = {"tenant_id": str(tenant_id)} if tenant_id is not None else {"slug": str(slug)}
            raise not_found("TENANT_NOT_FOUND", f"tenant {next(iter(ref.values()))} not found", **ref)
        return row[0], row[1]

    async def list(
        self, size: int, token: str, show_deleted: bool, where: TenantFilter = NO_FILTER
    ) -> tuple[list[tuple[Tenant, str]], str]:
        # The fingerprint binds the token to the filter too.
        request = pagination.PageRequest(
            size, token, f"tenants:{int(show_deleted)}:{where.fingerprint()}", self._page_tokens
        )
        query = tenant_sql.with_admin_email()
        if not show_deleted:
            query = query.where(Tenant.state.not_in(GONE_TENANT_STATES))
        if where.states:
            query = query.where(Tenant.state.in_(sorted(where.states)))
        if where.labels:
            query = query.where(Tenant.labels.contains(where.labels))
        async with self._sessions() as session:
            rows = [(r[0], r[1]) for r in (await session.execute(_KEYSET.select(query, request))).all()]
        return _KEYSET.page(rows, request)

    async def delete(
        self, tenant_id: uuid.UUID, request_id: uuid.UUID | None, actor: str, etag: str = ""
    ) -> TenantWithOperation:
        """Soft delete. `etag`, if set, must be the tenant's current one, but
        only when a change would be made: a tenant already DELETING answers
        with its deletion operation whatever the etag (the deletion itself
        changed it, so a retry of a conditional delete still succeeds)."""
        async with self._sessions() as session, session.begin():
            tenant, admin_email = await _locked(session, tenant_id)
            if request_id is not None and (earlier := await _operation_by_request_id(session, request_id)):
                return await self._ensure_started(_replayed(earlier, OperationKind.DELETE, tenant, admin_email))
            if tenant.state == TenantState.DELETED:
                raise not_found("TENANT_DELETED", f"tenant {tenant_id} was deleted", tenant_id=str(tenant_id))
            if tenant.state == TenantState.DELETING:
                operation = (await session.scalars(operation_sql.latest(tenant_id, OperationKind.DELETE))).one()
                return await self._ensure_started(TenantWithOperation(tenant, admin_email, operation))
            assert tenant.state in DELETABLE_TENANT_STATES
            _check_etag(tenant, etag)
            await self._fence(session, tenant)
            # The deletion supersedes a provisioning still open (a CREATING
            # tenant): the deletion workflow cancels its workflow first.
            await session.execute(
                operation_sql.cancel_open(tenant_id, OperationKind.PROVISION, "the tenant was deleted")
            )
            tenant = (
                await session.scalars(tenant_sql.soft_delete(tenant_id, self._retention), execution_options=_REFRESH)
            ).one()
            workflow_id = new_workflow_id(OperationKind.DELETE, tenant_id)
            operation = await _insert_operation(
                session, workflow_id, tenant_id, OperationKind.DELETE, request_id, actor
            )
            # Last: the event counter is held from here to the commit.
            await append_event(
                session,
                EventRecord(tenant_id, TenantEventType.DELETED, TenantState.DELETING, actor, workflow_id, request_id),
            )
        return await self._ensure_started(TenantWithOperation(tenant, admin_email, operation))

    async def retry_provisioning(
        self, tenant_id: uuid.UUID, etag: str, request_id: uuid.UUID | None, actor: str
    ) -> TenantWithOperation:
        """FAILED -> CREATING with a new provisioning operation."""
        async with self._sessions() as session, session.begin():
            tenant, admin_email = await _locked(session, tenant_id)
            if request_id is not None and (earlier := await _operation_by_request_id(session, request_id)):
                return await self._ensure_started(_replayed(earlier, OperationKind.PROVISION, tenant, admin_email))
            if tenant.state == TenantState.DELETED:
                raise not_found("TENANT_DELETED", f"tenant {tenant_id} was deleted", tenant_id=str(tenant_id))
            _check_etag(tenant, etag)
            if tenant.state != TenantState.FAILED:
                raise _wrong_state(tenant_id, tenant.state)
            tenant = (await session.scalars(tenant_sql.retry_provisioning(tenant_id), execution_options=_REFRESH)).one()
            workflow_id = new_workflow_id(OperationKind.PROVISION, tenant_id)
            operation = await _insert_operation(
                session, workflow_id, tenant_id, OperationKind.PROVISION, request_id, actor
            )
            await append_event(
                session,
                EventRecord(
                    tenant_id,
                    TenantEventType.PROVISIONING_RETRIED,
                    TenantState.CREATING,
                    actor,
                    workflow_id,
                    request_id,
                ),
            )
        return await self._ensure_started(TenantWithOperation(tenant, admin_email, operation))

    async def move(
        self, tenant_id: uuid.UUID, target_shard: str, etag: str, request_id: uuid.UUID | None, actor: str
    ) -> TenantWithOperation:
        """An ACTIVE or SUSPENDED tenant's move to `target_shard`: the MOVE
        operation (PENDING, with both shards) committed, then its workflow
        started. The one-open-lifecycle-operation index refuses a second move
        (or a deletion while the move is open) with OPERATION_IN_PROGRESS."""
        if not SHARD_NAME_PATTERN.fullmatch(target_shard):
            raise invalid_field("target_shard", "not a shard name")
        if target_shard not in self._shards:
            raise invalid_field("target_shard", "not a configured shard")
        async with self._sessions() as session, session.begin():
            tenant, admin_email = await _locked(session, tenant_id)
            if request_id is not None and (earlier := await _operation_by_request_id(session, request_id)):
                return await self._ensure_started(_replayed(earlier, OperationKind.MOVE, tenant, admin_email))
            if tenant.state == TenantState.DELETED:
                raise not_found("TENANT_DELETED", f"tenant {tenant_id} was deleted", tenant_id=str(tenant_id))
            _check_etag(tenant, etag)
            if tenant.state not in MOVABLE_TENANT_STATES:
                raise _wrong_state(tenant_id, tenant.state)
            if tenant.shard == target_shard:
                raise failed_precondition(
                    "ALREADY_ON_SHARD",
                    f"tenant {tenant_id} is on shard {target_shard} already",
                    tenant_id=str(tenant_id),
                    shard=target_shard,
                )
            if tenant.shard in self._shards and self._shards.database_of(tenant.shard) == self._shards.database_of(
                target_shard
            ):
                # Two names for one database: its schema is there already (a
                # move would build the target over the live schema).
                raise failed_precondition(
                    "ALREADY_ON_SHARD",
                    f"tenant {tenant_id} is on shard {tenant.shard}, the same database as {target_shard}",
                    tenant_id=str(tenant_id),
                    shard=target_shard,
                )
            workflow_id = new_workflow_id(OperationKind.MOVE, tenant_id)
            operation = await _insert_operation(
                session,
                workflow_id,
                tenant_id,
                OperationKind.MOVE,
                request_id,
                actor,
                source_shard=tenant.shard,
                target_shard=target_shard,
            )
        return await self._ensure_started(TenantWithOperation(tenant, admin_email, operation))

    async def undelete(
        self, tenant_id: uuid.UUID, etag: str, request_id: uuid.UUID | None, actor: str
    ) -> tenant_pb2.Tenant:
        """DELETING (data retained, purge not due) -> the state it had; the
        deletion operation ends CANCELLED in the same transaction, so the
        purge (which locks the same row and checks both) can never follow."""
        cancelled: list[str] = []

        async def apply(session: AsyncSession, tenant: Tenant) -> _Applied | None:
            if tenant.state_before_delete not in RETAINED_TENANT_STATES:
                # From CREATING or FAILED: purged at once, nothing to restore.
                return None
            restored = (await session.scalars(tenant_sql.undelete(tenant_id), execution_options=_REFRESH)).one_or_none()
            if restored is None:
                return None  # the purge is due: it wins
            deletion = (await session.scalars(operation_sql.latest(tenant_id, OperationKind.DELETE))).one()
            await session.execute(
                operation_sql.transition(
                    deletion.workflow_id, OPEN_OPERATION_STATES, OperationState.CANCELLED, "the tenant was undeleted"
                )
            )
            cancelled.append(deletion.workflow_id)
            return _Applied(restored, deletion.workflow_id)

        response = await self._change(
            "UndeleteTenant",
            tenant_id,
            etag,
            request_id,
            actor,
            frozenset({TenantState.DELETING}),
            TenantEventType.UNDELETED,
            apply,
            _tenant_only,
            _tenant_from_record,
        )
        for workflow_id in cancelled:
            # Ends the workflow's wait now instead of at its purge time.
            await self._starter.recheck_purge(workflow_id)
        return response

    async def purge(
        self, tenant_id: uuid.UUID, request_id: uuid.UUID | None, actor: str
    ) -> tenant_service_pb2.PurgeTenantResponse:
        """A DELETING tenant's purge becomes due now; its deletion workflow is
        woken to do it."""
        woken: list[str] = []

        async def apply(session: AsyncSession, tenant: Tenant) -> _Applied | None:
            due = (await session.scalars(tenant_sql.purge_now(tenant_id), execution_options=_REFRESH)).one_or_none()
            if due is None:
                return None
            deletion = (await session.scalars(operation_sql.latest(tenant_id, OperationKind.DELETE))).one()
            woken.append(deletion.workflow_id)
            return _Applied(due, deletion.workflow_id, deletion)

        def respond(tenant: tenant_pb2.Tenant, applied: _Applied) -> tenant_service_pb2.PurgeTenantResponse:
            assert applied.operation is not None
            return tenant_service_pb2.PurgeTenantResponse(
                tenant=tenant, operation=operation_to_proto(applied.operation)
            )

        response = await self._change(
            "PurgeTenant",
            tenant_id,
            "",
            request_id,
            actor,
            frozenset({TenantState.DELETING}),
            None,
            apply,
            respond,
            tenant_service_pb2.PurgeTenantResponse.FromString,
        )
        for workflow_id in woken:
            await self._starter.recheck_purge(workflow_id)
        return response

    async def update(
        self, tenant_id: uuid.UUID, etag: str, change: TenantUpdate, request_id: uuid.UUID | None, actor: str
    ) -> tenant_pb2.Tenant:
        async def apply(session: AsyncSession, tenant: Tenant) -> _Applied | None:
            statement = tenant_sql.update_fields(tenant_id, UPDATABLE_TENANT_STATES, change.values())
            updated = (await session.scalars(statement, execution_options=_REFRESH)).one_or_none()
            return None if updated is None else _Applied(updated)

        return await self._change(
            "UpdateTenant",
            tenant_id,
            etag,
            request_id,
            actor,
            UPDATABLE_TENANT_STATES,
            TenantEventType.UPDATED,
            apply,
            _tenant_only,
            _tenant_from_record,
        )

    async def suspend(
        self, tenant_id: uuid.UUID, reason: str, etag: str, request_id: uuid.UUID | None, actor: str
    ) -> tenant_pb2.Tenant:
        return await self._transition(
            "SuspendTenant",
            tenant_id,
            etag,
            request_id,
            actor,
            TenantState.ACTIVE,
            TenantState.SUSPENDED,
            reason,
            TenantEventType.SUSPENDED,
        )

    async def resume(
        self, tenant_id: uuid.UUID, etag: str, request_id: uuid.UUID | None, actor: str
    ) -> tenant_pb2.Tenant:
        return await self._transition(
            "ResumeTenant",
            tenant_id,
            etag,
            request_id,
            actor,
            TenantState.SUSPENDED,
            TenantState.ACTIVE,
            "",
            TenantEventType.RESUMED,
        )

    async def _transition(
        self,
        method: str,
        tenant_id: uuid.UUID,
        etag: str,
        request_id: uuid.UUID | None,
        actor: str,
        expected: TenantState,
        new: TenantState,
        message: str,
        event: TenantEventType,
    ) -> tenant_pb2.Tenant:
        async def apply(session: AsyncSession, tenant: Tenant) -> _Applied | None:
            await self._fence(session, tenant)
            statement = tenant_sql.change_state(tenant_id, expected, new, message)
            changed = (await session.scalars(statement, execution_options=_REFRESH)).one_or_none()
            return None if changed is None else _Applied(changed)

        return await self._change(
            method,
            tenant_id,
            etag,
            request_id,
            actor,
            frozenset({expected}),
            event,
            apply,
            _tenant_only,
            _tenant_from_record,
        )

    async def _change(
        self,
        method: str,
        tenant_id: uuid.UUID,
        etag: str,
        request_id: uuid.UUID | None,
        actor: str,
        allowed: frozenset[TenantState],
        event: TenantEventType | None,
        apply: Callable[[AsyncSession, Tenant], Awaitable[_Applied | None]],
        respond: Callable[[tenant_pb2.Tenant, _Applied], _Response],
        parse_record: Callable[[bytes], _Response],
    ) -> _Response:
        """One synchronous change in one transaction: the row locked, a
        repeated request_id answered from its record, the etag and the state
        checked, the change (itself conditional on the state: None when the
        tenant is not in a state it may be made from), the request record, and
        last the event. Refused calls write nothing."""
        async with self._sessions() as session, session.begin():
            tenant, admin_email = await _locked(session, tenant_id)
            if request_id is not None:
                # Read under the row lock: a concurrent first attempt has committed (or not) by now.
                earlier = await session.get(RequestRecord, request_id)
                if earlier is not None:
                    if earlier.method != method or earlier.tenant_id != tenant_id:
                        raise invalid_field("request_id", "was already used for another request")
                    return parse_record(earlier.response)
            if tenant.state == TenantState.DELETED:
                raise not_found("TENANT_DELETED", f"tenant {tenant_id} was deleted", tenant_id=str(tenant_id))
            _check_etag(tenant, etag)
            if tenant.state not in allowed:
                raise _wrong_state(tenant_id, tenant.state)
            applied = await apply(session, tenant)
            if applied is None:
                raise _wrong_state(tenant_id, tenant.state)
            result = respond(tenant_to_proto(applied.tenant, admin_email), applied)
            if request_id is not None:
                try:
                    async with session.begin_nested():
                        session.add(
                            RequestRecord(
                                request_id=request_id,
                                method=method,
                                tenant_id=tenant_id,
                                response=result.SerializeToString(deterministic=True),
                            )
                        )
                except IntegrityError as exc:
                    # Used at the same moment for another tenant.
                    raise invalid_field("request_id", "was already used for another request") from exc
            if event is not None:
                # Last: the event counter is held from here to the commit.
                state = TenantState(applied.tenant.state)
                await append_event(
                    session, EventRecord(tenant_id, event, state, actor, applied.operation_name, request_id)
                )
        return result

    async def _fence(self, session: AsyncSession, tenant: Tenant) -> None:
        """Before a change that stops an ACTIVE tenant serving (suspend,
        delete) commits, its shard's admission row says so
        (tenantry.db.admission): committed first on a shard of its own (the
        protocol of tenantry.db.shards.shard_transaction), in this transaction
        on the control plane's database. The tenant's row is locked
        (`_locked`), so its version + 1 is the version the change commits. A
        shard that cannot be reached refuses the change (SHARD_UNAVAILABLE):
        committing it unfenced would let that shard admit the tenant's calls
        once it is back."""
        if tenant.state != TenantState.ACTIVE:
            return
        try:
            shard = self._shards[tenant.shard]
        except UnknownShardError:
            raise shard_unavailable(str(tenant.id), tenant.shard) from None
        fence = text(admission.fence(tenant.id, tenant.version + 1))
        try:
            if shard.local:
                await session.execute(fence)
                return
            try:
                conn = await shard.engine.connect()
            except (DBAPIError, OSError, TimeoutError) as exc:
                raise shard_unavailable(str(tenant.id), shard.name) from exc
            try:
                async with conn.begin():
                    await conn.execute(fence)
            finally:
                await conn.close()
        except DBAPIError as exc:
            if pg_error(exc).sqlstate == UNDEFINED_TABLE:
                # An operator's step missed, not the caller's fault: unavailable until it is done.
                log.error("shard %s has no %s: run tenantry-migrate", shard.name, admission.ADMISSION_TABLE)
            elif shard.local or not connection_lost(exc):
                raise
            raise shard_unavailable(str(tenant.id), shard.name) from exc

    async def _by_request_id(self, request_id: uuid.UUID, kind: OperationKind) -> TenantWithOperation | None:
        async with self._sessions() as session:
            operation = await _operation_by_request_id(session, request_id)
            if operation is None:
                return None
            tenant, admin_email = (
                await session.execute(tenant_sql.with_admin_email().where(Tenant.id == operation.tenant_id))
            ).one()
        return _replayed(operation, kind, tenant, admin_email)

    async def _ensure_started(self, result: TenantWithOperation) -> TenantWithOperation:
        """Starts the operation's workflow while it is PENDING. The response
        shows the operation as committed (PENDING): the worker writes RUNNING."""
        operation = result.operation
        if operation.state == OperationState.PENDING:
            await self._starter.start(
                OperationRef(
                    operation.workflow_id,
                    operation.kind,
                    result.tenant.id,
                    result.tenant.admin_user_id,
                    operation.source_shard,
                    operation.target_shard,
                )
            )
        return result


_Response = TypeVar("_Response", bound=Message)


@dataclass(frozen=True)
class _Applied:
    """What a synchronous change made: the tenant as it is now and the
    operation the change belongs to, if any (named in its event)."""

    tenant: Tenant
    operation_name: str = ""
    operation: Operation | None = None


def _tenant_only(tenant: tenant_pb2.Tenant, applied: _Applied) -> tenant_pb2.Tenant:
    return tenant


def _tenant_from_record(response: bytes) -> tenant_pb2.Tenant:
    return tenant_pb2.Tenant.FromString(response)


async def _locked(session: AsyncSession, tenant_id: uuid.UUID) -> tuple[Tenant, str]:
    """The tenant and its admin's email, its row locked until the transaction ends."""
    row = (
        await session.execute(tenant_sql.with_admin_email().where(Tenant.id == tenant_id).with_for_update(of=Tenant))
    ).one_or_none()
    if row is None:
        raise not_found("TENANT_NOT_FOUND", f"tenant {tenant_id} not found", tenant_id=str(tenant_id))
    return row[0], row[1]


async def _operation_by_request_id(session: AsyncSession, request_id: uuid.UUID) -> Operation | None:
    return (await session.scalars(select(Operation).where(Operation.request_id == request_id))).one_or_none()


def _replayed(operation: Operation, kind: OperationKind, tenant: Tenant, admin_email: str) -> TenantWithOperation:
    """A repeated request_id: the operation it created, with its tenant as it
    is now; a request_id used for another kind of call or tenant is refused."""
    if operation.kind != kind or operation.tenant_id != tenant.id:
        raise invalid_field("request_id", "was already used for another request")
    return TenantWithOperation(tenant, admin_email, operation)


async def _insert_operation(
    session: AsyncSession,
    workflow_id: str,
    tenant_id: uuid.UUID,
    kind: OperationKind,
    request_id: uuid.UUID | None,
    actor: str,
    *,
    source_shard: str = "",
    target_shard: str = "",
) -> Operation:
    """A new PENDING operation. The database keeps one lifecycle operation
    open per tenant: another one open is FAILED_PRECONDITION
    `OPERATION_IN_PROGRESS` naming it (the transaction is rolled back)."""
    try:
        async with session.begin_nested():
            return (
                await session.scalars(
                    operation_sql.insert_pending(
                        workflow_id,
                        tenant_id,
                        kind,
                        request_id,
                        actor,
                        source_shard=source_shard,
                        target_shard=target_shard,
                    )
                )
            ).one()
    except IntegrityError as exc:
        if pg_error(exc).constraint_name != operation_sql.OPEN_LIFECYCLE_INDEX:
            # A request_id used at the same moment by another call.
            raise invalid_field("request_id", "was already used for another request") from exc
        open_id = await session.scalar(operation_sql.open_lifecycle_operation(tenant_id))
        name = f"{OPERATION_NAME_PREFIX}{open_id}"
        raise failed_precondition(
            "OPERATION_IN_PROGRESS",
            f"tenant {tenant_id} has an operation in progress: {name}; wait for it to finish",
            tenant_id=str(tenant_id),
            operation=name,
        ) from exc

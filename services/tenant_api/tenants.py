"""TenantService logic: registration, lookup, listing, soft deletion, and the
synchronous changes (update, suspend, resume).

Discipline shared by RegisterTenant and DeleteTenant: write the change and its
PENDING operation atomically (one transaction, or one statement), commit, and
only then start the workflow. A start that fails leaves a PENDING operation the reconciler picks up.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tenant_api import pagination
from tenant_api.convert import tenant_etag, tenant_to_proto
from tenant_api.errors import ApiError, aborted, already_exists, failed_precondition, invalid_field, not_found
from tenant_api.tenant_changes import TenantFilter, TenantUpdate
from tenant_api.validation import RegistrationInput
from tenantry.db import operations as operation_sql
from tenantry.db import tenants as tenant_sql
from tenantry.db.events import EventRecord, append_event
from tenantry.db.models import Operation, RequestRecord, Tenant
from tenantry.db.tenants import TenantWithOperation
from tenantry.operation_starter import OperationRef, OperationStarter
from tenantry.pg_errors import UNIQUE_VIOLATION, pg_error
from tenantry.states import (
    DELETABLE_TENANT_STATES,
    GONE_TENANT_STATES,
    OperationKind,
    OperationState,
    TenantEventType,
    TenantState,
)
from tenantry.v1 import tenant_pb2
from tenantry.workflow_contract import delete_workflow_id

NO_FILTER = TenantFilter(frozenset(), {})
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
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._starter = starter
        self._page_tokens = page_tokens

    async def register(self, request: RegistrationInput, actor: str) -> TenantWithOperation:
        # No pre-read of request_id: a replay collides on the slug (or the
        # request_id) and is resolved below, so first attempts pay nothing.
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
        query = tenant_sql.with_admin_email()
        query = query.where(Tenant.id == tenant_id) if tenant_id is not None else query.where(Tenant.slug == slug)
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
        workflow_id = delete_workflow_id(tenant_id)
        async with self._sessions() as session, session.begin():
            tenant, admin_email = await _locked(session, tenant_id)
            if tenant.state == TenantState.DELETED:
                raise not_found("TENANT_DELETED", f"tenant {tenant_id} was deleted", tenant_id=str(tenant_id))
            if tenant.state == TenantState.DELETING:
                operation = (await session.scalars(select(Operation).where(Operation.workflow_id == workflow_id))).one()
                result = TenantWithOperation(tenant, admin_email, operation)
            else:
                assert tenant.state in DELETABLE_TENANT_STATES
                _check_etag(tenant, etag)
                tenant = (
                    await session.scalars(
                        tenant_sql.soft_delete(tenant_id),
                        # The row is already in the identity map (locked above):
                        # without populate_existing RETURNING hands back the stale
                        # pre-update object (state ACTIVE, old etag).
                        execution_options={"synchronize_session": False, "populate_existing": True},
                    )
                ).one()
                try:
                    operation = (
                        await session.scalars(
                            operation_sql.insert_pending(
                                workflow_id, tenant_id, OperationKind.DELETE, request_id, actor
                            )
                        )
                    ).one()
                except IntegrityError as exc:
                    raise invalid_field("request_id", "was already used for another request") from exc
                # Last: the event counter is held from here to the commit.
                await append_event(
                    session,
                    EventRecord(
                        tenant_id, TenantEventType.DELETED, TenantState.DELETING, actor, workflow_id, request_id
                    ),
                )
                result = TenantWithOperation(tenant, admin_email, operation)
        return await self._ensure_started(result)

    async def update(
        self, tenant_id: uuid.UUID, etag: str, change: TenantUpdate, request_id: uuid.UUID | None, actor: str
    ) -> tenant_pb2.Tenant:
        async def apply(session: AsyncSession) -> Tenant | None:
            return (
                await session.scalars(
                    tenant_sql.update_fields(tenant_id, UPDATABLE_TENANT_STATES, change.values()),
                    execution_options=_REFRESH,
                )
            ).one_or_none()

        return await self._change(
            "UpdateTenant", tenant_id, etag, request_id, actor, UPDATABLE_TENANT_STATES, TenantEventType.UPDATED, apply
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
        async def apply(session: AsyncSession) -> Tenant | None:
            return (
                await session.scalars(
                    tenant_sql.change_state(tenant_id, expected, new, message), execution_options=_REFRESH
                )
            ).one_or_none()

        return await self._change(method, tenant_id, etag, request_id, actor, frozenset({expected}), event, apply)

    async def _change(
        self,
        method: str,
        tenant_id: uuid.UUID,
        etag: str,
        request_id: uuid.UUID | None,
        actor: str,
        allowed: frozenset[TenantState],
        event: TenantEventType,
        apply: Callable[[AsyncSession], Awaitable[Tenant | None]],
    ) -> tenant_pb2.Tenant:
        """One synchronous change in one transaction: the row locked, a
        repeated request_id answered from its record, the etag and the state
        checked, the change (itself conditional on the state), the request
        record, and last the event. Refused calls write nothing."""
        async with self._sessions() as session, session.begin():
            tenant, admin_email = await _locked(session, tenant_id)
            if request_id is not None:
                # Read under the row lock: a concurrent first attempt has committed (or not) by now.
                earlier = await session.get(RequestRecord, request_id)
                if earlier is not None:
                    if earlier.method != method or earlier.tenant_id != tenant_id:
                        raise invalid_field("request_id", "was already used for another request")
                    return tenant_pb2.Tenant.FromString(earlier.response)
            if tenant.state == TenantState.DELETED:
                raise not_found("TENANT_DELETED", f"tenant {tenant_id} was deleted", tenant_id=str(tenant_id))
            _check_etag(tenant, etag)
            if tenant.state not in allowed:
                raise _wrong_state(tenant_id, tenant.state)
            changed = await apply(session)
            if changed is None:  # not reached while the row is locked; kept for safety
                raise _wrong_state(tenant_id, tenant.state)
            result = tenant_to_proto(changed, admin_email)
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
            # Last: the event counter is held from here to the commit.
            await append_event(
                session, EventRecord(tenant_id, event, TenantState(changed.state), actor, "", request_id)
            )
        return result

    async def _by_request_id(self, request_id: uuid.UUID, kind: OperationKind) -> TenantWithOperation | None:
        async with self._sessions() as session:
            operation = (
                await session.scalars(select(Operation).where(Operation.request_id == request_id))
            ).one_or_none()
            if operation is None:
                return None
            if operation.kind != kind:
                raise invalid_field("request_id", "was already used for another kind of request")
            tenant, admin_email = (
                await session.execute(tenant_sql.with_admin_email().where(Tenant.id == operation.tenant_id))
            ).one()
        return TenantWithOperation(tenant, admin_email, operation)

    async def _ensure_started(self, result: TenantWithOperation) -> TenantWithOperation:
        operation = result.operation
        if operation.state != OperationState.PENDING:
            return result
        start_time = await self._starter.start(
            OperationRef(operation.workflow_id, operation.kind, operation.tenant_id, result.tenant.admin_user_id)
        )
        if start_time is not None:
            operation.state = OperationState.RUNNING
            operation.start_time = start_time
        return result


async def _locked(session: AsyncSession, tenant_id: uuid.UUID) -> tuple[Tenant, str]:
    """The tenant and its admin's email, its row locked until the transaction ends."""
    row = (
        await session.execute(tenant_sql.with_admin_email().where(Tenant.id == tenant_id).with_for_update(of=Tenant))
    ).one_or_none()
    if row is None:
        raise not_found("TENANT_NOT_FOUND", f"tenant {tenant_id} not found", tenant_id=str(tenant_id))
    return row[0], row[1]

"""TenantService logic: registration, lookup, listing and soft deletion.

Discipline shared by RegisterTenant and DeleteTenant: write the change and its
PENDING operation atomically (one transaction, or one statement), commit, and
only then start the workflow. A start that fails leaves a PENDING operation the reconciler picks up.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Select, insert, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tenant_api import pagination
from tenant_api.errors import already_exists, invalid_field, not_found
from tenant_api.validation import RegistrationInput
from tenantry.db.models import Operation, Tenant, User
from tenantry.operation_starter import OperationRef, OperationStarter
from tenantry.pg_errors import UNIQUE_VIOLATION, pg_error
from tenantry.schema_names import schema_name_for
from tenantry.states import DELETABLE_TENANT_STATES, OperationKind, OperationState, TenantState
from tenantry.workflow_contract import delete_workflow_id, provision_workflow_id

_TENANT_COLUMNS = [
    "id",
    "slug",
    "display_name",
    "admin_user_id",
    "state",
    "state_message",
    "schema_name",
    "version",
    "create_time",
    "update_time",
    "delete_time",
    "purge_time",
]
_OPERATION_COLUMNS = [
    "workflow_id",
    "tenant_id",
    "kind",
    "state",
    "error_message",
    "request_id",
    "create_time",
    "update_time",
    "start_time",
    "end_time",
]

# Registration as one statement: a data-modifying CTE is atomic on its own, so
# it runs in autocommit with a single round trip. Uniqueness stays with the
# database: a taken slug fails on uq_tenants_slug, a replayed request_id on
# uq_workflow_executions_request_id.
_REGISTER = text(
    f"""
    WITH admin AS (
        INSERT INTO users (id, email, display_name) VALUES (:user_id, :email, :admin_display_name)
        -- A no-op update so RETURNING yields an existing user's id too; it also
        -- waits for a concurrent insert of the same email instead of failing.
        ON CONFLICT ((lower(email))) DO UPDATE SET email = users.email
        RETURNING id, email
    ), tenant AS (
        INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name)
        SELECT CAST(:tenant_id AS uuid), CAST(:slug AS varchar), CAST(:display_name AS varchar), admin.id,
               '{TenantState.CREATING}', CAST(:schema_name AS varchar)
        FROM admin
        RETURNING {", ".join(_TENANT_COLUMNS)}
    ), operation AS (
        INSERT INTO workflow_executions (workflow_id, tenant_id, kind, state, request_id)
        SELECT CAST(:workflow_id AS varchar), tenant.id, '{OperationKind.PROVISION}', '{OperationState.PENDING}',
               CAST(:request_id AS uuid)
        FROM tenant
        RETURNING {", ".join(_OPERATION_COLUMNS)}
    )
    SELECT admin.email AS admin_email,
           {", ".join(f"tenant.{c} AS t_{c}" for c in _TENANT_COLUMNS)},
           {", ".join(f"operation.{c} AS o_{c}" for c in _OPERATION_COLUMNS)}
    FROM admin, tenant, operation
    """
)


@dataclass(frozen=True)
class TenantWithOperation:
    tenant: Tenant
    admin_email: str
    operation: Operation


def _tenant_query() -> Select[Tenant, str]:
    return select(Tenant, User.email).join(User, User.id == Tenant.admin_user_id)


class Tenants:
    def __init__(
        self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], starter: OperationStarter
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._starter = starter

    async def register(self, request: RegistrationInput) -> TenantWithOperation:
        # No pre-read of request_id: a replay collides on the slug (or the
        # request_id) and is resolved below, so first attempts pay nothing.
        tenant_id = uuid.uuid4()
        params = {
            "user_id": uuid.uuid4(),
            "email": request.admin_email,
            "admin_display_name": request.admin_display_name,
            "tenant_id": tenant_id,
            "slug": request.slug,
            "display_name": request.display_name,
            "schema_name": schema_name_for(tenant_id),
            "workflow_id": provision_workflow_id(tenant_id),
            "request_id": request.request_id,
        }
        try:
            async with self._engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                row = (await conn.execute(_REGISTER, params)).one()._mapping
            tenant = Tenant(**{c: row[f"t_{c}"] for c in _TENANT_COLUMNS})
            operation = Operation(**{c: row[f"o_{c}"] for c in _OPERATION_COLUMNS})
            admin_email = row["admin_email"]
        except IntegrityError as exc:
            # A replay, or a concurrent call with the same request_id, won the slug.
            if request.request_id is not None:
                earlier = await self._by_request_id(request.request_id, OperationKind.PROVISION)
                if earlier is not None:
                    return await self._ensure_started(earlier)
            error = pg_error(exc)
            if error.sqlstate == UNIQUE_VIOLATION and error.constraint_name == "uq_tenants_slug":
                raise already_exists("TENANT_SLUG_TAKEN", f"slug {request.slug!r} is taken", slug=request.slug) from exc
            raise
        return await self._ensure_started(TenantWithOperation(tenant, admin_email, operation))

    async def get(self, tenant_id: uuid.UUID | None, slug: str | None) -> tuple[Tenant, str]:
        query = _tenant_query()
        query = query.where(Tenant.id == tenant_id) if tenant_id is not None else query.where(Tenant.slug == slug)
        async with self._sessions() as session:
            row = (await session.execute(query)).one_or_none()
        if row is None:
            ref = {"tenant_id": str(tenant_id)} if tenant_id is not None else {"slug": str(slug)}
            raise not_found("TENANT_NOT_FOUND", f"tenant {next(iter(ref.values()))} not found", **ref)
        return row[0], row[1]

    async def list(self, size: int, token: str, show_deleted: bool) -> tuple[list[tuple[Tenant, str]], str]:
        query_key = f"tenants:{int(show_deleted)}"
        after = pagination.decode_token(token, query_key, uuid.UUID)
        query = _tenant_query().order_by(Tenant.create_time, Tenant.id).limit(size + 1)
        if not show_deleted:
            query = query.where(Tenant.state.not_in((TenantState.DELETING, TenantState.DELETED)))
        if after is not None:
            position, key = after
            query = query.where(tuple_(Tenant.create_time, Tenant.id) > tuple_(position, key))
        async with self._sessions() as session:
            rows = [(r[0], r[1]) for r in (await session.execute(query)).all()]
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1][0]
            next_token = pagination.encode_token(last.create_time, str(last.id), query_key)
        return rows, next_token

    async def delete(self, tenant_id: uuid.UUID, request_id: uuid.UUID | None) -> TenantWithOperation:
        workflow_id = delete_workflow_id(tenant_id)
        async with self._sessions() as session, session.begin():
            row = (
                await session.execute(_tenant_query().where(Tenant.id == tenant_id).with_for_update(of=Tenant))
            ).one_or_none()
            if row is None:
                raise not_found("TENANT_NOT_FOUND", f"tenant {tenant_id} not found", tenant_id=str(tenant_id))
            tenant, admin_email = row[0], row[1]
            if tenant.state == TenantState.DELETED:
                raise not_found("TENANT_DELETED", f"tenant {tenant_id} was deleted", tenant_id=str(tenant_id))
            if tenant.state == TenantState.DELETING:
                operation = (await session.scalars(select(Operation).where(Operation.workflow_id == workflow_id))).one()
                result = TenantWithOperation(tenant, admin_email, operation)
            else:
                assert tenant.state in DELETABLE_TENANT_STATES
                tenant = (
                    await session.scalars(
                        update(Tenant)
                        .where(Tenant.id == tenant_id)
                        .values(
                            state=TenantState.DELETING,
                            delete_time=text("now()"),
                            # Data is purged right away by the deletion workflow.
                            purge_time=text("now()"),
                            update_time=text("now()"),
                            version=Tenant.version + 1,
                        )
                        .returning(Tenant),
                        # The row is already in the identity map (locked above):
                        # without populate_existing RETURNING hands back the stale
                        # pre-update object (state ACTIVE, old etag).
                        execution_options={"synchronize_session": False, "populate_existing": True},
                    )
                ).one()
                try:
                    operation = (
                        await session.scalars(
                            insert(Operation)
                            .values(
                                workflow_id=workflow_id,
                                tenant_id=tenant_id,
                                kind=OperationKind.DELETE,
                                state=OperationState.PENDING,
                                request_id=request_id,
                            )
                            .returning(Operation)
                        )
                    ).one()
                except IntegrityError as exc:
                    raise invalid_field("request_id", "was already used for another request") from exc
                result = TenantWithOperation(tenant, admin_email, operation)
        return await self._ensure_started(result)

    async def _by_request_id(self, request_id: uuid.UUID, kind: OperationKind) -> TenantWithOperation | None:
        async with self._sessions() as session:
            operation = (
                await session.scalars(select(Operation).where(Operation.request_id == request_id))
            ).one_or_none()
            if operation is None:
                return None
            if operation.kind != kind:
                raise invalid_field("request_id", "was already used for another kind of request")
            tenant, admin_email = (await session.execute(_tenant_query().where(Tenant.id == operation.tenant_id))).one()
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

"""The tenant aggregate's statements, for the API and the worker alike.

The hand-tuned ones (registration, the gate's admission, provisioning's lock
and activation) run on hot paths: each is one round trip and is built once, at
import, as SQL text rendered from the models (table and column names come from
`tenantry.db.models`, never hand-listed) or as a Core statement with bound
parameters, whose compiled form SQLAlchemy caches and asyncpg prepares. The
rarer changes (failure, soft delete, purge) are built per call.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Delete,
    Select,
    TextClause,
    bindparam,
    case,
    column,
    delete,
    exists,
    func,
    literal_column,
    select,
    table,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningUpdate

from tenantry.db.events import event_ctes, operation_actor
from tenantry.db.models import Operation, RequestRecord, Tenant, TenantMembership, User
from tenantry.schema_names import SCHEMA_NAME_REGEX, quote_schema, schema_name_for
from tenantry.settings import DEFAULT_SHARD, SHARD_NAME_PATTERN
from tenantry.states import (
    DELETABLE_TENANT_STATES,
    OPEN_OPERATION_STATES,
    RETAINED_TENANT_STATES,
    OperationKind,
    OperationState,
    TenantEventType,
    TenantState,
)
from tenantry.tracing import current_trace_id
from tenantry.workflow_contract import provision_workflow_id

_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])
PG_NAMESPACE = table("pg_namespace", column("nspname"), schema="pg_catalog")

TENANTS = Tenant.__tablename__
OPERATIONS = Operation.__tablename__
TENANT_COLUMNS: tuple[str, ...] = tuple(Tenant.__table__.c.keys())
OPERATION_COLUMNS: tuple[str, ...] = tuple(Operation.__table__.c.keys())
# The constraint a taken slug violates (naming convention in models.py).
SLUG_UNIQUE_CONSTRAINT = f"uq_{TENANTS}_slug"

# --- registration ------------------------------------------------------------


# Registration as one statement: a data-modifying CTE is atomic on its own, so
# it runs in autocommit with a single round trip. Uniqueness stays with the
# database: a taken slug fails on uq_tenants_slug, a replayed request_id on
# uq_workflow_executions_request_id.
# The shard (of the parameter `shards`, an array of names) with the fewest
# tenants that are not DELETED; ties to the first name. Registrations racing
# may pick the same one: placement balances, it need not be exact.
_FEWEST_TENANTS = f"""
    SELECT s.name FROM unnest(CAST(:shards AS varchar[])) AS s(name)
    ORDER BY (SELECT count(*) FROM {TENANTS} t WHERE t.shard = s.name AND t.state <> '{TenantState.DELETED}'), s.name
    LIMIT 1"""


def _register_statement(*, record_event: bool) -> TextClause:
    """Registration's statement. The product always records the REGISTERED
    event (`_REGISTER`); `record_event=False` exists only so the benchmark can
    measure what the event write costs (bench/events.py)."""
    events = ""
    if record_event:
        events = ", " + event_ctes(
            after="operation",
            tenant_id="(SELECT tenant_id FROM operation)",
            type=TenantEventType.REGISTERED,
            state=TenantState.CREATING,
            actor="CAST(:actor AS text)",
            operation="CAST(:workflow_id AS varchar)",
            request_id="CAST(:request_id AS uuid)",
        )
    return text(
        f"""
    WITH admin AS (
        INSERT INTO {User.__tablename__} (id, email, display_name) VALUES (:user_id, :email, :admin_display_name)
        -- A no-op update so RETURNING yields an existing user's id too; it also
        -- waits for a concurrent insert of the same email instead of failing.
        ON CONFLICT ((lower(email))) DO UPDATE SET email = {User.__tablename__}.email
        RETURNING id, email
    ), tenant AS (
        INSERT INTO {TENANTS} (id, slug, display_name, admin_user_id, state, schema_name, labels, shard)
        SELECT CAST(:tenant_id AS uuid), CAST(:slug AS varchar), CAST(:display_name AS varchar), admin.id,
               '{TenantState.CREATING}', CAST(:schema_name AS varchar), CAST(:labels AS jsonb),
               COALESCE(CAST(:shard AS varchar), ({_FEWEST_TENANTS}))
        FROM admin
        RETURNING {", ".join(TENANT_COLUMNS)}
    ), operation AS (
        INSERT INTO {OPERATIONS} (workflow_id, tenant_id, kind, state, request_id, actor, trace_id)
        SELECT CAST(:workflow_id AS varchar), tenant.id, '{OperationKind.PROVISION}', '{OperationState.PENDING}',
               CAST(:request_id AS uuid), CAST(:actor AS text), CAST(:trace_id AS varchar)
        FROM tenant
        RETURNING {", ".join(OPERATION_COLUMNS)}
    ){events}
    SELECT admin.email AS admin_email,
           {", ".join(f"tenant.{c} AS t_{c}" for c in TENANT_COLUMNS)},
           {", ".join(f"operation.{c} AS o_{c}" for c in OPERATION_COLUMNS)}
    FROM admin, tenant, operation
    """
    ).bindparams(bindparam("labels", type_=JSONB))


_REGISTER = _register_statement(record_event=True)


@dataclass(frozen=True)
class TenantWithOperation:
    tenant: Tenant
    admin_email: str
    operation: Operation


def with_admin_email() -> Select[Tenant, str]:
    """Tenants with their admin's email, the API's view of a tenant."""
    return select(Tenant, User.email).join(User, User.id == Tenant.admin_user_id)


async def register(
    conn: AsyncConnection,
    *,
    tenant_id: uuid.UUID,
    slug: str,
    display_name: str,
    admin_email: str,
    admin_display_name: str,
    request_id: uuid.UUID | None,
    actor: str,
    labels: Mapping[str, str] | None = None,
    shards: Sequence[str] = (DEFAULT_SHARD,),
) -> TenantWithOperation:
    """The admin user (found or created), the CREATING tenant (with `labels`,
    on the one shard of `shards`, or the one of them with the fewest live
    tenants) and its PENDING
    provisioning operation and the REGISTERED event, in one statement. Raises IntegrityError for a taken
    slug (`SLUG_UNIQUE_CONSTRAINT`) or a reused request_id."""
    params = {
        "user_id": uuid.uuid4(),
        "email": admin_email,
        "admin_display_name": admin_display_name,
        "tenant_id": tenant_id,
        "slug": slug,
        "display_name": display_name,
        "schema_name": schema_name_for(tenant_id),
        "workflow_id": provision_workflow_id(tenant_id),
        "request_id": request_id,
        "actor": actor,
        "labels": dict(labels or {}),
        "shard": shards[0] if len(shards) == 1 else None,
        "shards": list(shards),
        # The request's trace, so GetOperation leads to it ("" when not tracing).
        "trace_id": current_trace_id(),
    }
    row = (await conn.execute(_REGISTER, params)).one()._mapping
    return TenantWithOperation(
        tenant=Tenant(**{c: row[f"t_{c}"] for c in TENANT_COLUMNS}),
        admin_email=row["admin_email"],
        operation=Operation(**{c: row[f"o_{c}"] for c in OPERATION_COLUMNS}),
    )


# --- the gate's admission ----------------------------------------------------


def holder_of_slug(query: _Query, slug: object) -> _Query:
    """`query` narrowed to the tenant that holds `slug`: the one not DELETED
    (at most one, uq_tenants_slug), else the one purged most recently. Its
    only parameter is `slug` (the gate runs it with the driver's `$1`)."""
    return (
        query.where(Tenant.slug == slug)
        .order_by(literal_column(f"{TENANTS}.state = '{TenantState.DELETED}'"), Tenant.update_time.desc())
        .limit(literal_column("1"))
    )


_ADMISSION_COLUMNS = select(
    Tenant.id,
    Tenant.state,
    Tenant.schema_name,
    Tenant.purge_time,
    Tenant.schema_version,
    Tenant.shard,
    Tenant.moving,
    Tenant.version,
)
_ADMIT_BY_ID = _ADMISSION_COLUMNS.where(Tenant.id == bindparam("key"))
_ADMIT_BY_SLUG = holder_of_slug(_ADMISSION_COLUMNS, bindparam("key"))


@dataclass(frozen=True)
class AdmissionQueries:
    """The admission reads as the driver's SQL (`$1` the tenant id or slug;
    rows `(id, state, schema_name, purge_time, schema_version, shard,
    moving, version)`), rendered once per engine: admission runs on every
    tenant-scoped call, so it skips SQLAlchemy's execution layer."""

    by_id: str
    by_slug: str

    @classmethod
    def render(cls, dialect: Dialect) -> AdmissionQueries:
        return cls(
            by_id=str(_ADMIT_BY_ID.compile(dialect=dialect)),
            by_slug=str(_ADMIT_BY_SLUG.compile(dialect=dialect)),
        )


# Tenant revision ids: `t` and four digits, so their text order is the
# lineage's order (a test holds the lineage to it) and a revision compares in
# SQL as text.
TENANT_REVISION_PATTERN = re.compile(r"t[0-9]{4}")


def begin_if_active(oldest_revision: str, local_shards: Sequence[str]) -> Callable[[uuid.UUID], str]:
    """The statement that opens a call's transaction and checks the tenant is
    ACTIVE with its schema at `oldest_revision` or later, on one of
    `local_shards` (the shards on this database: the call runs in this very
    transaction) and not moving, in one round trip: the simple query protocol
    takes several statements but no parameters, and its status ("SELECT 1" or
    "SELECT 0") is the answer. Checked and rendered once (per process); per
    call only the tenant id goes in. The only values in it are a uuid.UUID's
    canonical text (hex digits and dashes), a revision id matching
    TENANT_REVISION_PATTERN and shard names matching SHARD_NAME_PATTERN."""
    if not TENANT_REVISION_PATTERN.fullmatch(oldest_revision):
        raise ValueError(f"not a tenant revision id: {oldest_revision!r}")
    if not local_shards or not all(SHARD_NAME_PATTERN.fullmatch(name) for name in local_shards):
        raise ValueError(f"not shard names: {local_shards!r}")
    shards = ", ".join(f"'{name}'" for name in local_shards)
    checks = (
        f"AND state = '{TenantState.ACTIVE.value}' AND schema_version >= '{oldest_revision}' "
        f"AND shard IN ({shards}) AND NOT moving"
    )

    def for_tenant(tenant_id: uuid.UUID) -> str:
        if not isinstance(tenant_id, uuid.UUID):
            raise TypeError("tenant_id must be a uuid.UUID")
        return f"BEGIN; SELECT 1 FROM {TENANTS} WHERE id = '{tenant_id}' {checks}"

    return for_tenant


def schema_is_behind(schema_version: str, oldest_revision: str) -> bool:
    """The tenant-lineage revision `schema_version` is older than `oldest_revision`."""
    return schema_version < oldest_revision


def state_of(tenant_id: uuid.UUID) -> Select[str, datetime | None, str, str, bool]:
    """The tenant's state, purge time, schema version, shard and whether it is moving."""
    return select(Tenant.state, Tenant.purge_time, Tenant.schema_version, Tenant.shard, Tenant.moving).where(
        Tenant.id == tenant_id
    )


def schema_exists(schema_name: str) -> Select[bool]:
    """Whether a schema of that name exists (the catalog, readable by every role)."""
    return select(exists().where(PG_NAMESPACE.c.nspname == schema_name))


# --- provisioning and deletion -----------------------------------------------

# The tenant's state and shard, its row locked until the transaction ends
# (parameter `tenant_id`).
LOCK_STATE = select(Tenant.state, Tenant.shard).where(Tenant.id == bindparam("tenant_id")).with_for_update()

# The tenant's state, whether its schema exists IN THE CONTROL PLANE'S CATALOG
# (the answer for a tenant on a local shard; a remote shard's catalog is asked
# apart) and its shard, the row locked (parameter `locked_tenant_id`). Built
# once: constructing a statement per call costs more CPU than running it.
LOCK_FOR_PROVISIONING = (
    select(Tenant.state, exists().where(PG_NAMESPACE.c.nspname == Tenant.schema_name), Tenant.shard)
    .where(Tenant.id == bindparam("locked_tenant_id"))
    .with_for_update(of=Tenant)
)

# The end of provisioning as one statement (one round trip): the admin
# membership (one that exists is success, a missing user a foreign-key
# violation), the operation SUCCEEDED, the tenant ACTIVE at `schema_version` (the
# tenant-lineage revision just stamped) and its ACTIVATED event. Parameters
# `tenant_id`, `user_id`, `workflow_id`, `schema_version`; returns the seconds
# since the tenant was registered.
ACTIVATE = text(
    f"""
    WITH membership AS (
        INSERT INTO {TenantMembership.__tablename__} (tenant_id, user_id, role)
        VALUES (CAST(:tenant_id AS uuid), CAST(:user_id AS uuid), 'admin')
        ON CONFLICT (tenant_id, user_id) DO NOTHING
    ), operation AS (
        UPDATE {OPERATIONS}
        SET state = '{OperationState.SUCCEEDED}', error_message = '', end_time = now(), update_time = now()
        WHERE workflow_id = CAST(:workflow_id AS varchar)
          AND state IN ({", ".join(f"'{state}'" for state in OPEN_OPERATION_STATES)})
    ), tenant AS (
        UPDATE {TENANTS} SET state = '{TenantState.ACTIVE}', update_time = now(), version = version + 1,
                             schema_version = CAST(:schema_version AS varchar)
        WHERE id = CAST(:tenant_id AS uuid)
        RETURNING id, extract(epoch FROM now() - create_time) AS elapsed
    ), {
        event_ctes(
            after="tenant",
            tenant_id="(SELECT id FROM tenant)",
            type=TenantEventType.ACTIVATED,
            state=TenantState.ACTIVE,
            actor=operation_actor("CAST(:workflow_id AS varchar)"),
            operation="CAST(:workflow_id AS varchar)",
        )
    }
    SELECT elapsed FROM tenant
    """
)

# --- the reconciler, per shard database --------------------------------------

# A shard's catalog and the control plane are two databases: the reconciler
# lists the tenant schemas of each shard database and compares them with the
# control plane's tenants placed on that database's shards (parameter
# `shards`, the names served by it). Tenants with an open MOVE are left out
# on both sides: a move has a copy on two shards, then one, by design.

# Tenant states whose schema may legitimately exist.
SCHEMA_OWNING_STATES = (TenantState.CREATING, TenantState.ACTIVE, TenantState.SUSPENDED, TenantState.DELETING)

# The tenant schemas in this database's catalog.
TENANT_SCHEMAS_IN_CATALOG = text(
    "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname ~ :schema_name_regex ORDER BY 1"
).bindparams(schema_name_regex=SCHEMA_NAME_REGEX)

_OPEN_STATES_SQL = ", ".join(f"'{state}'" for state in OPEN_OPERATION_STATES)
_OPEN_MOVE = (
    f"EXISTS (SELECT 1 FROM {OPERATIONS} w WHERE w.tenant_id = t.id AND w.kind = '{OperationKind.MOVE}' "
    f"AND w.state IN ({_OPEN_STATES_SQL}))"
)

# Of the schemas `schemas` (listed from the catalog of the database serving
# `shards`), those no live tenant placed on one of `shards` owns.
ORPHANS_AMONG = text(
    "SELECT s.name FROM unnest(CAST(:schemas AS varchar[])) AS s(name) "
    f"WHERE NOT EXISTS (SELECT 1 FROM {TENANTS} t WHERE t.schema_name = s.name "
    "AND (t.state = ANY(:live) AND t.shard = ANY(CAST(:shards AS varchar[])) "
    f"OR {_OPEN_MOVE})) ORDER BY 1"
).bindparams(live=[str(s) for s in SCHEMA_OWNING_STATES])

# Live tenants (ACTIVE, SUSPENDED) placed on one of `shards` (their schema must
# exist there), not moving: (id, schema_name, shard).
LIVE_ON_SHARDS = text(
    f"SELECT t.id, t.schema_name, t.shard FROM {TENANTS} t "
    f"WHERE t.state IN ('{TenantState.ACTIVE}', '{TenantState.SUSPENDED}') "
    "AND t.shard = ANY(CAST(:shards AS varchar[])) "
    f"AND NOT t.moving AND NOT {_OPEN_MOVE} ORDER BY t.id"
)

# Live tenants whose schema is below `head`: (id, shard).
BEHIND_HEAD_BY_SHARD = text(
    f"SELECT id, shard FROM {TENANTS} WHERE state IN ('{TenantState.ACTIVE}', '{TenantState.SUSPENDED}') "
    "AND schema_version <> CAST(:head AS varchar) ORDER BY id"
)

# Shards that tenants not DELETED are placed on, other than `shards`.
SHARDS_OTHER_THAN = text(
    f"SELECT DISTINCT shard FROM {TENANTS} WHERE state <> '{TenantState.DELETED}' "
    "AND shard <> ALL(CAST(:shards AS varchar[])) ORDER BY 1"
)


def mark_failed(tenant_id: uuid.UUID, message: str) -> ReturningUpdate[float]:
    """Provisioning failed; returns the seconds since the tenant was registered."""
    return (
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(state=TenantState.FAILED, state_message=message, update_time=text("now()"), version=Tenant.version + 1)
        .returning(func.extract("epoch", func.now() - Tenant.create_time))
    )


def mark_deleted(tenant_id: uuid.UUID) -> ReturningUpdate[float]:
    """Purged; returns the seconds since the soft delete."""
    return (
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.state == TenantState.DELETING)
        .values(state=TenantState.DELETED, update_time=text("now()"), version=Tenant.version + 1)
        .returning(func.extract("epoch", func.now() - Tenant.delete_time))
    )


def soft_delete(tenant_id: uuid.UUID, retention: timedelta) -> ReturningUpdate[Tenant]:
    """DeleteTenant's change: DELETING, remembering the state it left (what an
    undelete restores). An ACTIVE or SUSPENDED tenant's data is kept for
    `retention`; a CREATING or FAILED tenant's purge is due at once. Only from
    a deletable state (no row otherwise); returns the updated tenant. (SET
    expressions read the row as it was, so `state` there is the old state.)"""
    return (
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.state.in_(sorted(DELETABLE_TENANT_STATES)))
        .values(
            state=TenantState.DELETING,
            state_before_delete=Tenant.state,
            delete_time=text("now()"),
            purge_time=case(
                (Tenant.state.in_(sorted(RETAINED_TENANT_STATES)), func.now() + retention), else_=func.now()
            ),
            update_time=text("now()"),
            version=Tenant.version + 1,
        )
        .returning(Tenant)
    )


# Clocks for the purge race. `now()` is when the transaction began, which can
# be before another transaction that took the tenant row lock first: the
# undelete and PurgeTenant compare with `statement_timestamp()` (their
# statement runs after they hold the lock), the purge with `clock_timestamp()`
# (read while it holds the lock, or earlier, which only makes it wait longer).
# With the lock serialising them, exactly one of purge and undelete wins.


def undelete(tenant_id: uuid.UUID) -> ReturningUpdate[Tenant]:
    """UndeleteTenant's change: back to the state the delete left, only while
    the data is retained and its purge is not due (by the database's clock,
    which the purge reads under the same row lock: exactly one of them wins).
    Run under the tenant's row lock. No row otherwise; returns the updated
    tenant."""
    return (
        update(Tenant)
        .where(
            Tenant.id == tenant_id,
            Tenant.state == TenantState.DELETING,
            Tenant.state_before_delete.in_(sorted(RETAINED_TENANT_STATES)),
            Tenant.purge_time > func.statement_timestamp(),
        )
        .values(
            state=Tenant.state_before_delete,
            state_before_delete=None,
            delete_time=None,
            purge_time=None,
            update_time=text("now()"),
            version=Tenant.version + 1,
        )
        .returning(Tenant)
    )


def purge_now(tenant_id: uuid.UUID) -> ReturningUpdate[Tenant]:
    """PurgeTenant's change: a DELETING tenant's purge is due now (no row
    otherwise). Run under the tenant's row lock; returns the updated tenant."""
    return (
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.state == TenantState.DELETING)
        .values(
            purge_time=func.least(Tenant.purge_time, func.statement_timestamp()),
            update_time=text("now()"),
            version=Tenant.version + 1,
        )
        .returning(Tenant)
    )


def retry_provisioning(tenant_id: uuid.UUID) -> ReturningUpdate[Tenant]:
    """RetryTenantProvisioning's change: FAILED -> CREATING (no row otherwise);
    returns the updated tenant."""
    return (
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.state == TenantState.FAILED)
        .values(state=TenantState.CREATING, state_message="", update_time=text("now()"), version=Tenant.version + 1)
        .returning(Tenant)
    )


# The tenant's state, whether its purge is due and its shard, its row locked
# (parameter `tenant_id`; no row: no such tenant). `seconds_left` is how long
# until it is.
LOCK_FOR_PURGE = (
    select(
        Tenant.state,
        func.greatest(func.extract("epoch", Tenant.purge_time - func.clock_timestamp()), 0).label("seconds_left"),
        Tenant.shard,
    )
    .where(Tenant.id == bindparam("tenant_id"))
    .with_for_update()
)


def change_state(
    tenant_id: uuid.UUID, expected: TenantState, new: TenantState, message: str
) -> ReturningUpdate[Tenant]:
    """Suspend and resume: `expected` -> `new` with `message` as state_message,
    only if the tenant is still in `expected` (no row otherwise); returns the
    updated tenant."""
    return (
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.state == expected)
        .values(state=new, state_message=message, update_time=text("now()"), version=Tenant.version + 1)
        .returning(Tenant)
    )


def update_fields(
    tenant_id: uuid.UUID, allowed: Iterable[TenantState], values: Mapping[str, object]
) -> ReturningUpdate[Tenant]:
    """UpdateTenant: `values` (display_name, labels), only while the tenant is
    in one of the `allowed` states (no row otherwise); returns the updated tenant."""
    return (
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.state.in_(list(allowed)))
        .values(**values, update_time=text("now()"), version=Tenant.version + 1)
        .returning(Tenant)
    )


# How long a synchronous change's request_id is remembered (AIP-155): a repeat
# within it returns the original result; the reconciler forgets older records,
# so the table does not grow for ever. (Operations keep their request_id.)
REQUEST_RECORD_RETENTION = timedelta(days=7)


def forget_request_records(older_than: timedelta) -> Delete:
    return delete(RequestRecord).where(RequestRecord.create_time < func.now() - older_than)


def revoke_memberships(tenant_id: uuid.UUID) -> Delete:
    return delete(TenantMembership).where(TenantMembership.tenant_id == tenant_id)


def drop_schema(tenant_id: uuid.UUID) -> TextClause:
    return text(f"DROP SCHEMA IF EXISTS {quote_schema(schema_name_for(tenant_id))} CASCADE")

"""Typed ORM models.

Two metadata collections: the control plane (public schema, alembic lineage
`migrations/control_plane`) and the per-tenant tables (schema-less here, placed
in the tenant's schema with `schema_translate_map`; lineage `migrations/tenant`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tenantry.schema_names import SCHEMA_NAME_FROM_ID_SQL
from tenantry.settings import DEFAULT_SHARD, SHARD_NAME_PATTERN
from tenantry.states import (
    LIFECYCLE_OPERATION_KINDS,
    OPEN_OPERATION_STATES,
    OperationKind,
    OperationState,
    TenantEventType,
    TenantState,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: Iterable[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}


class TenantBase(DeclarativeBase):
    """Tables that live in every tenant's schema."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(100))
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())


# Case-insensitive uniqueness lives in the database, not in a check-then-insert.
Index("uq_users_lower_email", func.lower(User.email), unique=True)


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint(_in("state", TenantState), name="state"),
        CheckConstraint(f"schema_name = {SCHEMA_NAME_FROM_ID_SQL}", name="schema_name_from_id"),
        Index("ix_tenants_create_time_id", "create_time", "id"),
        Index("ix_tenants_labels", "labels", postgresql_using="gin"),
        # A slug is held by at most one tenant that is not DELETED: a purged
        # tenant's slug can be registered again (its record stays, for audit).
        Index(
            "uq_tenants_slug",
            "slug",
            unique=True,
            postgresql_where=text(f"state <> '{TenantState.DELETED}'"),
        ),
        # GetTenant by slug also finds purged holders (most recent first).
        Index("ix_tenants_slug_update_time", "slug", "update_time"),
        CheckConstraint(f"shard ~ '^{SHARD_NAME_PATTERN.pattern}$'", name="shard_name"),
        # Placement counts the live tenants of each shard.
        Index("ix_tenants_shard_live", "shard", postgresql_where=text(f"state <> '{TenantState.DELETED}'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(40))
    display_name: Mapped[str] = mapped_column(String(100))
    # The admin membership intent: the provisioning workflow creates the
    # membership for this user.
    admin_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    state_message: Mapped[str] = mapped_column(Text, server_default="")
    schema_name: Mapped[str] = mapped_column(String(63), unique=True)
    # Bumped by every update; the API's etag.
    version: Mapped[int] = mapped_column(server_default=text("1"))
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())
    update_time: Mapped[datetime] = mapped_column(server_default=func.now())
    delete_time: Mapped[datetime | None]
    purge_time: Mapped[datetime | None]
    # Validated by the API (tenant_api.tenant_changes); filtered with @>.
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # The tenant-lineage revision its schema is at, stamped by provisioning ("" before).
    schema_version: Mapped[str] = mapped_column(String(32), server_default="")
    # While DELETING: the state UndeleteTenant restores (ACTIVE or SUSPENDED
    # when the data is retained; CREATING or FAILED when it is purged at once).
    state_before_delete: Mapped[str | None] = mapped_column(String(16))
    # The database (a TENANTRY_SHARDS name) that holds its schema.
    shard: Mapped[str] = mapped_column(String(31), server_default=DEFAULT_SHARD)
    # True only during a move's final copy-and-switch: the gate answers
    # UNAVAILABLE TENANT_MOVING, and writes to the old copy are blocked.
    moving: Mapped[bool] = mapped_column(server_default=false())


class TenantMembership(Base):
    __tablename__ = "tenant_memberships"
    __table_args__ = (CheckConstraint("role IN ('admin', 'member')", name="role"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())


class Operation(Base):
    """The database record of a workflow: an Operation in the API."""

    __tablename__ = "workflow_executions"
    __table_args__ = (
        CheckConstraint(_in("state", OperationState), name="state"),
        CheckConstraint(_in("kind", OperationKind), name="kind"),
        Index("ix_workflow_executions_tenant_id_create_time", "tenant_id", "create_time"),
        Index("ix_workflow_executions_state_create_time", "state", "create_time"),
        Index("ix_workflow_executions_create_time_workflow_id", "create_time", "workflow_id"),
        # A fleet rollout (MIGRATE) is the one kind without a tenant.
        CheckConstraint(f"tenant_id IS NOT NULL OR kind = '{OperationKind.MIGRATE}'", name="tenant_unless_fleet"),
        # At most one open fleet rollout (`tenantry-migrate tenants` re-attaches to it).
        Index(
            "uq_workflow_executions_open_migrate",
            "kind",
            unique=True,
            postgresql_where=text(f"{_in('state', OPEN_OPERATION_STATES)} AND kind = '{OperationKind.MIGRATE}'"),
        ),
        # At most one open lifecycle operation per tenant (design.md, OperationService).
        Index(
            "uq_workflow_executions_open_lifecycle",
            "tenant_id",
            unique=True,
            postgresql_where=text(
                f"{_in('state', OPEN_OPERATION_STATES)} AND {_in('kind', LIFECYCLE_OPERATION_KINDS)}"
            ),
        ),
    )

    workflow_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    # None for a fleet-wide operation (MIGRATE).
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id"))
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    error_message: Mapped[str] = mapped_column(Text, server_default="")
    # The principal (`sub`) whose request started it; `system:<component>` otherwise.
    actor: Mapped[str] = mapped_column(Text, server_default="")
    # Client-supplied idempotency key (AIP-155) of the call that created it.
    request_id: Mapped[uuid.UUID | None] = mapped_column(unique=True)
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())
    update_time: Mapped[datetime] = mapped_column(server_default=func.now())
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    # The OpenTelemetry trace id (32 hex digits) of the request that created
    # it; "" when that process was not tracing (tenantry.tracing).
    trace_id: Mapped[str] = mapped_column(String(32), server_default="")
    # An operation over many tenants (MIGRATE): how many it has to do, has
    # done and has failed (each failure in rollout_failures), and its target
    # tenant-lineage revision.
    progress_total: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    progress_succeeded: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    progress_failed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    target_revision: Mapped[str] = mapped_column(String(32), server_default="")
    # A MOVE: the shard it moves the tenant from and to ("" otherwise).
    source_shard: Mapped[str] = mapped_column(String(31), server_default="")
    target_shard: Mapped[str] = mapped_column(String(31), server_default="")


class RolloutFailure(Base):
    """A tenant a fleet rollout could not upgrade, and why (a stable reason)."""

    __tablename__ = "rollout_failures"

    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflow_executions.workflow_id"), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())


class TenantEventCounter(Base):
    """One row: the last event sequence number handed out. Taking a number
    locks this row until commit, so numbers become visible in the order they
    were handed out (see the 0003 migration)."""

    __tablename__ = "tenant_event_counter"
    __table_args__ = (CheckConstraint("id", name="one_row"),)

    id: Mapped[bool] = mapped_column(primary_key=True, server_default=text("true"))
    last_sequence: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class TenantEvent(Base):
    """Append-only audit log and change feed, written in the transaction of
    the change it records."""

    __tablename__ = "tenant_events"
    __table_args__ = (
        CheckConstraint(_in("type", TenantEventType), name="type"),
        Index("ix_tenant_events_tenant_id_sequence", "tenant_id", "sequence"),
        # A fleet rollout's succeeded count (tenantry.db.rollouts.RECOUNT_PROGRESS).
        Index(
            "ix_tenant_events_schema_migrated_operation",
            "operation",
            postgresql_where=text("type = 'SCHEMA_MIGRATED'"),
        ),
    )

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(Text)
    operation: Mapped[str] = mapped_column(String(200), server_default="")
    request_id: Mapped[uuid.UUID | None]
    event_time: Mapped[datetime] = mapped_column(server_default=func.now())


class RequestRecord(Base):
    """A mutating call's result by its client-supplied `request_id` (AIP-155),
    written in the call's transaction: a repeat returns `response` as it was.
    (Register and Delete use their operation's request_id instead.)"""

    __tablename__ = "request_records"

    request_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # The gRPC method name, e.g. "SuspendTenant".
    method: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    # The serialized response message.
    response: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())


class Project(TenantBase):
    __tablename__ = "projects"
    __table_args__ = (Index("ix_projects_create_time_id", "create_time", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, server_default="")
    create_time: Mapped[datetime] = mapped_column(server_default=func.now())
    update_time: Mapped[datetime] = mapped_column(server_default=func.now())
    # Tenant revision t0002.
    archived: Mapped[bool] = mapped_column(server_default=false())

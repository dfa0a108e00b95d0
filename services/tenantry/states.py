"""State values stored in the database (and enforced there by CHECK constraints)."""

from __future__ import annotations

from enum import StrEnum


class TenantState(StrEnum):
    CREATING = "CREATING"
    ACTIVE = "ACTIVE"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETED = "DELETED"
    SUSPENDED = "SUSPENDED"


class OperationKind(StrEnum):
    PROVISION = "PROVISION"
    DELETE = "DELETE"
    # Fleet-wide schema rollouts and moves between shards (their workflows
    # come later; the kinds exist so the one-open-operation rule covers them).
    MIGRATE = "MIGRATE"
    MOVE = "MOVE"


# Operations that change a tenant's lifecycle: at most one of them is open
# (PENDING or RUNNING) per tenant, enforced by a partial unique index.
LIFECYCLE_OPERATION_KINDS = (OperationKind.PROVISION, OperationKind.DELETE, OperationKind.MOVE)


class OperationState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


OPEN_OPERATION_STATES = (OperationState.PENDING, OperationState.RUNNING)
DONE_OPERATION_STATES = frozenset({OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED})
# Deleted or being deleted: hidden from listings unless asked for, never updated.
GONE_TENANT_STATES = frozenset({TenantState.DELETING, TenantState.DELETED})
# States from which DeleteTenant may soft-delete a tenant.
DELETABLE_TENANT_STATES = frozenset(
    {TenantState.CREATING, TenantState.ACTIVE, TenantState.FAILED, TenantState.SUSPENDED}
)
# States whose data a soft delete keeps until `purge_time` (an undelete
# returns the tenant to the state it had); a CREATING or FAILED tenant has
# nothing worth keeping and is purged at once.
RETAINED_TENANT_STATES = frozenset({TenantState.ACTIVE, TenantState.SUSPENDED})


class TenantEventType(StrEnum):
    """What happened to a tenant (the audit log and change feed)."""

    REGISTERED = "REGISTERED"
    ACTIVATED = "ACTIVATED"
    PROVISIONING_FAILED = "PROVISIONING_FAILED"
    PROVISIONING_RETRIED = "PROVISIONING_RETRIED"
    UPDATED = "UPDATED"
    SUSPENDED = "SUSPENDED"
    RESUMED = "RESUMED"
    DELETED = "DELETED"
    UNDELETED = "UNDELETED"
    PURGED = "PURGED"
    SCHEMA_MIGRATED = "SCHEMA_MIGRATED"
    MOVED = "MOVED"

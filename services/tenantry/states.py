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


class OperationState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


DONE_OPERATION_STATES = frozenset({OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED})
# Deleted or being deleted: hidden from listings unless asked for, never updated.
GONE_TENANT_STATES = frozenset({TenantState.DELETING, TenantState.DELETED})
# States from which DeleteTenant may soft-delete a tenant.
DELETABLE_TENANT_STATES = frozenset(
    {TenantState.CREATING, TenantState.ACTIVE, TenantState.FAILED, TenantState.SUSPENDED}
)


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

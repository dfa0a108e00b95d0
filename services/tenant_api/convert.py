"""Database rows to protobuf messages."""

from __future__ import annotations

import hashlib
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from tenant_api.operations import OPERATION_NAME_PREFIX
from tenantry.db.models import Operation, Project, Tenant, TenantEvent
from tenantry.states import DONE_OPERATION_STATES, OperationKind, OperationState, TenantState
from tenantry.v1 import event_service_pb2, operation_pb2, project_service_pb2, tenant_pb2

_TENANT_STATES = {
    TenantState.CREATING: tenant_pb2.TENANT_STATE_CREATING,
    TenantState.ACTIVE: tenant_pb2.TENANT_STATE_ACTIVE,
    TenantState.FAILED: tenant_pb2.TENANT_STATE_FAILED,
    TenantState.DELETING: tenant_pb2.TENANT_STATE_DELETING,
    TenantState.DELETED: tenant_pb2.TENANT_STATE_DELETED,
    TenantState.SUSPENDED: tenant_pb2.TENANT_STATE_SUSPENDED,
}
_OPERATION_STATES = {
    OperationState.PENDING: operation_pb2.OPERATION_STATE_PENDING,
    OperationState.RUNNING: operation_pb2.OPERATION_STATE_RUNNING,
    OperationState.SUCCEEDED: operation_pb2.OPERATION_STATE_SUCCEEDED,
    OperationState.FAILED: operation_pb2.OPERATION_STATE_FAILED,
    OperationState.CANCELLED: operation_pb2.OPERATION_STATE_CANCELLED,
}
OPERATION_STATE_FROM_PROTO = {v: k for k, v in _OPERATION_STATES.items()}
_OPERATION_KINDS = {
    OperationKind.PROVISION: operation_pb2.OPERATION_KIND_PROVISION,
    OperationKind.DELETE: operation_pb2.OPERATION_KIND_DELETE,
    OperationKind.MIGRATE: operation_pb2.OPERATION_KIND_MIGRATE,
    OperationKind.MOVE: operation_pb2.OPERATION_KIND_MOVE,
}
OPERATION_KIND_FROM_PROTO = {v: k for k, v in _OPERATION_KINDS.items()}


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def tenant_etag(tenant: Tenant) -> str:
    """Opaque and tenant-specific: a digest of the id and the row version, so
    one tenant's etag never matches another's, whatever their versions."""
    digest = hashlib.sha256(f"{tenant.id}:{tenant.version}".encode()).hexdigest()[:20]
    return f'W/"{digest}"'


def canonical_email(email: str) -> str:
    """The form an email is compared in (`lower(email)`, the users index)."""
    return email.lower()


def tenant_to_proto(tenant: Tenant, admin_email: str) -> tenant_pb2.Tenant:
    """The API's view of a tenant. `admin_email` is shown in its canonical,
    lower-case form (emails are ASCII and case-insensitively unique): the
    stored casing is the first registrant's, and echoing it would tell a
    RegisterTenant caller that the address already belonged to a user."""
    return tenant_pb2.Tenant(
        id=str(tenant.id),
        slug=tenant.slug,
        display_name=tenant.display_name,
        admin_email=canonical_email(admin_email),
        state=_TENANT_STATES[TenantState(tenant.state)],
        state_message=tenant.state_message,
        create_time=_timestamp(tenant.create_time),
        update_time=_timestamp(tenant.update_time),
        delete_time=_timestamp(tenant.delete_time),
        purge_time=_timestamp(tenant.purge_time),
        schema_name=tenant.schema_name,
        etag=tenant_etag(tenant),
        labels=tenant.labels,
        schema_version=tenant.schema_version,
        shard=tenant.shard,
    )


def operation_to_proto(operation: Operation) -> operation_pb2.Operation:
    state = OperationState(operation.state)
    return operation_pb2.Operation(
        name=OPERATION_NAME_PREFIX + operation.workflow_id,
        tenant_id=str(operation.tenant_id) if operation.tenant_id is not None else "",
        kind=_OPERATION_KINDS[OperationKind(operation.kind)],
        state=_OPERATION_STATES[state],
        done=state in DONE_OPERATION_STATES,
        error_message=operation.error_message,
        actor=operation.actor,
        trace_id=operation.trace_id,
        create_time=_timestamp(operation.create_time),
        start_time=_timestamp(operation.start_time),
        end_time=_timestamp(operation.end_time),
        progress=_progress(operation),
    )


def _progress(operation: Operation) -> operation_pb2.OperationProgress | None:
    """Counts of an operation over many tenants; None (unset) for one tenant's."""
    if operation.kind != OperationKind.MIGRATE:
        return None
    return operation_pb2.OperationProgress(
        total=operation.progress_total or 0,
        succeeded=operation.progress_succeeded or 0,
        failed=operation.progress_failed or 0,
    )


def project_to_proto(project: Project) -> project_service_pb2.Project:
    return project_service_pb2.Project(
        id=str(project.id),
        name=project.name,
        description=project.description,
        create_time=_timestamp(project.create_time),
        update_time=_timestamp(project.update_time),
        archived=project.archived,
    )


def event_to_proto(event: TenantEvent) -> event_service_pb2.TenantEvent:
    return event_service_pb2.TenantEvent(
        sequence=event.sequence,
        tenant_id=str(event.tenant_id),
        # Stored types are the proto names without the prefix (a test checks both lists).
        type=f"TENANT_EVENT_TYPE_{event.type}",
        state=_TENANT_STATES[TenantState(event.state)],
        actor=event.actor,
        operation=OPERATION_NAME_PREFIX + event.operation if event.operation else "",
        request_id=str(event.request_id) if event.request_id else "",
        event_time=_timestamp(event.event_time),
    )

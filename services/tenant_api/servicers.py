"""Thin servicers: validate, delegate to the service layer, convert."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc

from tenant_api import pagination
from tenant_api.authentication import current_actor
from tenant_api.convert import (
    OPERATION_KIND_FROM_PROTO,
    OPERATION_STATE_FROM_PROTO,
    event_to_proto,
    operation_to_proto,
    project_to_proto,
    tenant_to_proto,
)
from tenant_api.errors import FieldViolation, invalid_field, invalid_fields
from tenant_api.events import TenantEvents
from tenant_api.operations import Operations
from tenant_api.projects import Projects
from tenant_api.tenant_changes import parse_filter, validate_reason, validate_update
from tenant_api.tenant_gate import current_tenant
from tenant_api.tenants import Tenants
from tenant_api.validation import optional_uuid, require_uuid, slug_problem, validate_project, validate_registration
from tenantry.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    operation_pb2,
    operation_service_pb2,
    operation_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_WAIT = timedelta(seconds=30)
# design.md: WaitOperation blocks "at most 60 s per call"; a longer timeout is
# clamped to it (the caller then gets the operation as it is and calls again).
MAX_WAIT = timedelta(seconds=60)


class TenantServicer(tenant_service_pb2_grpc.TenantServiceServicer):
    def __init__(self, tenants: Tenants) -> None:
        self._tenants = tenants

    async def RegisterTenant(
        self, request: tenant_service_pb2.RegisterTenantRequest, context: Context
    ) -> tenant_service_pb2.RegisterTenantResponse:
        registration = validate_registration(
            request.slug,
            request.display_name,
            request.admin_email,
            request.admin_display_name,
            request.request_id,
            request.labels,
            request.shard,
        )
        result = await self._tenants.register(registration, current_actor())
        return tenant_service_pb2.RegisterTenantResponse(
            tenant=tenant_to_proto(result.tenant, result.admin_email), operation=operation_to_proto(result.operation)
        )

    async def GetTenant(
        self, request: tenant_service_pb2.GetTenantRequest, context: Context
    ) -> tenant_service_pb2.GetTenantResponse:
        which = request.WhichOneof("tenant_ref")
        if which == "tenant_id":
            tenant, email = await self._tenants.get(require_uuid("tenant_id", request.tenant_id), None)
        elif which == "slug":
            if slug_problem(request.slug) is not None:
                raise invalid_field("slug", "is not a valid slug")
            tenant, email = await self._tenants.get(None, request.slug)
        else:
            raise invalid_field("tenant_ref", "set tenant_id or slug")
        return tenant_service_pb2.GetTenantResponse(tenant=tenant_to_proto(tenant, email))

    async def ListTenants(
        self, request: tenant_service_pb2.ListTenantsRequest, context: Context
    ) -> tenant_service_pb2.ListTenantsResponse:
        where = parse_filter(request.filter, request.show_deleted)
        rows, next_token = await self._tenants.list(
            pagination.page_size(request.page_size), request.page_token, request.show_deleted, where
        )
        return tenant_service_pb2.ListTenantsResponse(
            tenants=[tenant_to_proto(tenant, email) for tenant, email in rows], next_page_token=next_token
        )

    async def UpdateTenant(
        self, request: tenant_service_pb2.UpdateTenantRequest, context: Context
    ) -> tenant_service_pb2.UpdateTenantResponse:
        tenant_id = require_uuid("tenant.id", request.tenant.id)
        request_id = optional_uuid("request_id", request.request_id)
        change = validate_update(list(request.update_mask.paths), request.tenant.display_name, request.tenant.labels)
        tenant = await self._tenants.update(tenant_id, request.tenant.etag, change, request_id, current_actor())
        return tenant_service_pb2.UpdateTenantResponse(tenant=tenant)

    async def SuspendTenant(
        self, request: tenant_service_pb2.SuspendTenantRequest, context: Context
    ) -> tenant_service_pb2.SuspendTenantResponse:
        tenant_id = require_uuid("tenant_id", request.tenant_id)
        request_id = optional_uuid("request_id", request.request_id)
        reason = validate_reason(request.reason)
        tenant = await self._tenants.suspend(tenant_id, reason, request.etag, request_id, current_actor())
        return tenant_service_pb2.SuspendTenantResponse(tenant=tenant)

    async def ResumeTenant(
        self, request: tenant_service_pb2.ResumeTenantRequest, context: Context
    ) -> tenant_service_pb2.ResumeTenantResponse:
        tenant_id = require_uuid("tenant_id", request.tenant_id)
        request_id = optional_uuid("request_id", request.request_id)
        tenant = await self._tenants.resume(tenant_id, request.etag, request_id, current_actor())
        return tenant_service_pb2.ResumeTenantResponse(tenant=tenant)

    async def DeleteTenant(
        self, request: tenant_service_pb2.DeleteTenantRequest, context: Context
    ) -> tenant_service_pb2.DeleteTenantResponse:
        tenant_id = require_uuid("tenant_id", request.tenant_id)
        request_id = optional_uuid("request_id", request.request_id)
        result = await self._tenants.delete(tenant_id, request_id, current_actor(), etag=request.etag)
        return tenant_service_pb2.DeleteTenantResponse(
            tenant=tenant_to_proto(result.tenant, result.admin_email), operation=operation_to_proto(result.operation)
        )

    async def UndeleteTenant(
        self, request: tenant_service_pb2.UndeleteTenantRequest, context: Context
    ) -> tenant_service_pb2.UndeleteTenantResponse:
        tenant_id = require_uuid("tenant_id", request.tenant_id)
        request_id = optional_uuid("request_id", request.request_id)
        tenant = await self._tenants.undelete(tenant_id, request.etag, request_id, current_actor())
        return tenant_service_pb2.UndeleteTenantResponse(tenant=tenant)

    async def PurgeTenant(
        self, request: tenant_service_pb2.PurgeTenantRequest, context: Context
    ) -> tenant_service_pb2.PurgeTenantResponse:
        tenant_id = require_uuid("tenant_id", request.tenant_id)
        request_id = optional_uuid("request_id", request.request_id)
        return await self._tenants.purge(tenant_id, request_id, current_actor())

    async def RetryTenantProvisioning(
        self, request: tenant_service_pb2.RetryTenantProvisioningRequest, context: Context
    ) -> tenant_service_pb2.RetryTenantProvisioningResponse:
        tenant_id = require_uuid("tenant_id", request.tenant_id)
        request_id = optional_uuid("request_id", request.request_id)
        result = await self._tenants.retry_provisioning(tenant_id, request.etag, request_id, current_actor())
        return tenant_service_pb2.RetryTenantProvisioningResponse(
            tenant=tenant_to_proto(result.tenant, result.admin_email), operation=operation_to_proto(result.operation)
        )

    async def MoveTenant(
        self, request: tenant_service_pb2.MoveTenantRequest, context: Context
    ) -> tenant_service_pb2.MoveTenantResponse:
        tenant_id = require_uuid("tenant_id", request.tenant_id)
        request_id = optional_uuid("request_id", request.request_id)
        result = await self._tenants.move(tenant_id, request.target_shard, request.etag, request_id, current_actor())
        return tenant_service_pb2.MoveTenantResponse(
            tenant=tenant_to_proto(result.tenant, result.admin_email), operation=operation_to_proto(result.operation)
        )


class OperationServicer(operation_service_pb2_grpc.OperationServiceServicer):
    def __init__(self, operations: Operations) -> None:
        self._operations = operations

    async def GetOperation(
        self, request: operation_service_pb2.GetOperationRequest, context: Context
    ) -> operation_service_pb2.GetOperationResponse:
        operation = await self._operations.get(request.name)
        return operation_service_pb2.GetOperationResponse(operation=operation_to_proto(operation))

    async def ListOperations(
        self, request: operation_service_pb2.ListOperationsRequest, context: Context
    ) -> operation_service_pb2.ListOperationsResponse:
        tenant_id = optional_uuid("tenant_id", request.tenant_id)
        state = None
        if request.state != operation_pb2.OPERATION_STATE_UNSPECIFIED:
            state = OPERATION_STATE_FROM_PROTO.get(request.state)
            if state is None:
                raise invalid_field("state", "is not an OperationState")
        kind = None
        if request.kind != operation_pb2.OPERATION_KIND_UNSPECIFIED:
            kind = OPERATION_KIND_FROM_PROTO.get(request.kind)
            if kind is None:
                raise invalid_field("kind", "is not an OperationKind")
        operations, next_token = await self._operations.list(
            tenant_id, state, pagination.page_size(request.page_size), request.page_token, kind=kind
        )
        return operation_service_pb2.ListOperationsResponse(
            operations=[operation_to_proto(op) for op in operations], next_page_token=next_token
        )

    async def WaitOperation(
        self, request: operation_service_pb2.WaitOperationRequest, context: Context
    ) -> operation_service_pb2.WaitOperationResponse:
        wait = DEFAULT_WAIT
        if request.HasField("timeout"):
            timeout = request.timeout
            if timeout.seconds < 0 or not 0 <= timeout.nanos <= 999_999_999:
                raise invalid_fields([FieldViolation("timeout", "must be a non-negative duration")])
            # Clamp before converting: huge durations overflow timedelta.
            wait = MAX_WAIT if timeout.seconds >= MAX_WAIT.total_seconds() else timeout.ToTimedelta()
        seconds = wait.total_seconds()
        remaining = context.time_remaining()
        if remaining is not None:
            # Answer with the latest state just before the caller's deadline.
            seconds = min(seconds, max(remaining - 0.5, 0.0))
        operation = await self._operations.wait(request.name, seconds)
        return operation_service_pb2.WaitOperationResponse(operation=operation_to_proto(operation))


class TenantEventServicer(event_service_pb2_grpc.TenantEventServiceServicer):
    def __init__(self, events: TenantEvents) -> None:
        self._events = events

    async def ListTenantEvents(
        self, request: event_service_pb2.ListTenantEventsRequest, context: Context
    ) -> event_service_pb2.ListTenantEventsResponse:
        events, next_token = await self._events.list(
            optional_uuid("tenant_id", request.tenant_id), pagination.page_size(request.page_size), request.page_token
        )
        return event_service_pb2.ListTenantEventsResponse(
            events=[event_to_proto(event) for event in events], next_page_token=next_token
        )

    async def WatchTenantEvents(
        self, request: event_service_pb2.WatchTenantEventsRequest, context: Context
    ) -> AsyncIterator[event_service_pb2.WatchTenantEventsResponse]:
        tenant_id = optional_uuid("tenant_id", request.tenant_id)
        after = request.after_sequence if request.HasField("after_sequence") else None
        if after is not None and after < 0:
            raise invalid_field("after_sequence", "must not be negative")
        async for event in self._events.watch(tenant_id, after):
            yield event_service_pb2.WatchTenantEventsResponse(event=event_to_proto(event))


class ProjectServicer(project_service_pb2_grpc.ProjectServiceServicer):
    """Tenant-scoped: the gate interceptor has admitted the tenant in `current_tenant`."""

    def __init__(self, projects: Projects) -> None:
        self._projects = projects

    async def CreateProject(
        self, request: project_service_pb2.CreateProjectRequest, context: Context
    ) -> project_service_pb2.CreateProjectResponse:
        name, description = validate_project(request.name, request.description)
        project = await self._projects.create(current_tenant.get(), name, description, request.archived)
        return project_service_pb2.CreateProjectResponse(project=project_to_proto(project))

    async def GetProject(
        self, request: project_service_pb2.GetProjectRequest, context: Context
    ) -> project_service_pb2.GetProjectResponse:
        project = await self._projects.get(current_tenant.get(), require_uuid("project_id", request.project_id))
        return project_service_pb2.GetProjectResponse(project=project_to_proto(project))

    async def ListProjects(
        self, request: project_service_pb2.ListProjectsRequest, context: Context
    ) -> project_service_pb2.ListProjectsResponse:
        projects, next_token = await self._projects.list(
            current_tenant.get(), pagination.page_size(request.page_size), request.page_token
        )
        return project_service_pb2.ListProjectsResponse(
            projects=[project_to_proto(p) for p in projects], next_page_token=next_token
        )

    async def DeleteProject(
        self, request: project_service_pb2.DeleteProjectRequest, context: Context
    ) -> project_service_pb2.DeleteProjectResponse:
        await self._projects.delete(current_tenant.get(), require_uuid("project_id", request.project_id))
        return project_service_pb2.DeleteProjectResponse()

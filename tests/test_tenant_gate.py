"""The tenant gate on tenant-scoped RPCs (ProjectService CRUD is in test_projects.py).

Every row of the design's gate table is driven over real gRPC against a real
PostgreSQL and Temporal; each expected error is checked by code and ErrorInfo reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api.headers import TENANT_ID_HEADER, TENANT_SLUG_HEADER
from tenant_api.tenant_gate import is_tenant_scoped
from tenantry.db.engine import create_engine
from tenantry.v1 import (
    operation_pb2,
    operation_service_pb2,
    options_pb2,
    project_service_pb2,
    tenant_pb2,
    tenant_service_pb2,
)
from tests.stack import (
    Metadata,
    Stack,
    Stubs,
    by_id,
    contract_services,
    delete_and_purge,
    error_info,
    expect_error,
    failing_provisioning_stack,
    register_active,
    registration,
    running_stack,
    wait_done,
)


def every_tenant_scoped_rpc(stubs: Stubs, metadata: Metadata | None) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each tenant-scoped RPC, all with valid bodies, by method path."""
    projects = stubs.projects
    some_id = str(uuid.uuid4())
    service = "/tenantry.v1.ProjectService"
    return {
        f"{service}/ListProjects": lambda: projects.ListProjects(
            project_service_pb2.ListProjectsRequest(), metadata=metadata, timeout=10
        ),
        f"{service}/CreateProject": lambda: projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=f"p-{uuid.uuid4().hex[:8]}"), metadata=metadata, timeout=10
        ),
        f"{service}/GetProject": lambda: projects.GetProject(
            project_service_pb2.GetProjectRequest(project_id=some_id), metadata=metadata
        ),
        f"{service}/DeleteProject": lambda: projects.DeleteProject(
            project_service_pb2.DeleteProjectRequest(project_id=some_id), metadata=metadata, timeout=10
        ),
    }


# Every tenant-scoped RPC of the contract, read from the compiled descriptors.
TENANT_SCOPED_RPCS = {
    f"/{service}/{method}"
    for service, methods in contract_services().items()
    for method in methods
    if is_tenant_scoped(f"/{service}/{method}")
}


async def assert_gate(stubs: Stubs, metadata: Metadata | None, code: grpc.StatusCode, reason: str) -> None:
    calls = every_tenant_scoped_rpc(stubs, metadata)
    # A tenant-scoped RPC added to the contract must be added to the calls above.
    assert set(calls) == TENANT_SCOPED_RPCS, sorted(TENANT_SCOPED_RPCS ^ set(calls))
    for call in calls.values():
        await expect_error(call(), code, reason)


# --- the gate table ---------------------------------------------------------------


async def test_no_tenant_metadata_is_tenant_required(stack: Stack) -> None:
    await assert_gate(stack.stubs, None, grpc.StatusCode.INVALID_ARGUMENT, "TENANT_REQUIRED")
    # Unrelated metadata and an empty value do not name a tenant either.
    await assert_gate(stack.stubs, (("x-other", "1"),), grpc.StatusCode.INVALID_ARGUMENT, "TENANT_REQUIRED")
    await assert_gate(stack.stubs, ((TENANT_ID_HEADER, ""),), grpc.StatusCode.INVALID_ARGUMENT, "TENANT_REQUIRED")


@pytest.mark.parametrize(
    "metadata",
    [
        ((TENANT_ID_HEADER, "not-a-uuid"),),
        ((TENANT_ID_HEADER, "1' OR '1'='1"),),
        ((TENANT_ID_HEADER, str(uuid.uuid4()) + "x"),),
        ((TENANT_ID_HEADER, uuid.uuid4().hex),),  # not the canonical form
        ((TENANT_SLUG_HEADER, "Not A Slug"),),
        ((TENANT_SLUG_HEADER, "x"),),
        ((TENANT_SLUG_HEADER, "a" * 41),),
        ((TENANT_SLUG_HEADER, "public"),),
    ],
)
async def test_malformed_tenant_metadata_is_invalid_tenant_id(stack: Stack, metadata: Metadata) -> None:
    await assert_gate(stack.stubs, metadata, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TENANT_ID")


async def test_unknown_tenant_is_not_found(stack: Stack) -> None:
    await assert_gate(stack.stubs, by_id(str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")
    unknown_slug = ((TENANT_SLUG_HEADER, f"nobody-{uuid.uuid4().hex[:8]}"),)
    await assert_gate(stack.stubs, unknown_slug, grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")


async def test_creating_tenant_is_not_ready(idle_stack: Stack) -> None:
    response = await idle_stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
    assert response.tenant.state == tenant_pb2.TENANT_STATE_CREATING
    await assert_gate(
        idle_stack.stubs, by_id(response.tenant.id), grpc.StatusCode.FAILED_PRECONDITION, "TENANT_NOT_READY"
    )
    slug = ((TENANT_SLUG_HEADER, response.tenant.slug),)
    await assert_gate(idle_stack.stubs, slug, grpc.StatusCode.FAILED_PRECONDITION, "TENANT_NOT_READY")


async def test_failed_tenant_is_failed(engine: AsyncEngine, temporal_client: Client) -> None:
    async with failing_provisioning_stack(engine=engine, client=temporal_client, message="disk on fire") as failing:
        response = await failing.stubs.tenants.RegisterTenant(registration(), timeout=30)
        operation = await wait_done(failing.stubs, response.operation.name)
        assert operation.state == operation_pb2.OPERATION_STATE_FAILED
        tenant = (
            await failing.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id))
        ).tenant
        assert tenant.state == tenant_pb2.TENANT_STATE_FAILED
        assert tenant.state_message.startswith("PROVISIONING_FAILED: ")
        assert "disk on fire" not in tenant.state_message
        await assert_gate(failing.stubs, by_id(tenant.id), grpc.StatusCode.FAILED_PRECONDITION, "TENANT_FAILED")


async def test_deleting_tenant_is_deleting(stack: Stack, idle_stack: Stack) -> None:
    tenant = await register_active(stack.stubs)
    # Deleting through the worker-less API: the tenant stays soft-deleted.
    deleted = await idle_stack.stubs.tenants.DeleteTenant(
        tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id), timeout=30
    )
    assert deleted.tenant.state == tenant_pb2.TENANT_STATE_DELETING
    await assert_gate(stack.stubs, by_id(tenant.id), grpc.StatusCode.FAILED_PRECONDITION, "TENANT_DELETING")
    slug = ((TENANT_SLUG_HEADER, tenant.slug),)
    await assert_gate(stack.stubs, slug, grpc.StatusCode.FAILED_PRECONDITION, "TENANT_DELETING")


async def test_deleted_tenant_is_deleted(stack: Stack) -> None:
    tenant = await register_active(stack.stubs)
    operation = await delete_and_purge(stack.stubs, tenant.id)
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    await assert_gate(stack.stubs, by_id(tenant.id), grpc.StatusCode.NOT_FOUND, "TENANT_DELETED")
    slug = ((TENANT_SLUG_HEADER, tenant.slug),)
    await assert_gate(stack.stubs, slug, grpc.StatusCode.NOT_FOUND, "TENANT_DELETED")


async def test_tenant_slug_header_routes_like_tenant_id(stack: Stack) -> None:
    tenant = await register_active(stack.stubs)
    slug = ((TENANT_SLUG_HEADER, tenant.slug),)
    created = await stack.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="via-slug"), metadata=slug
    )
    listed_by_id = await stack.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=by_id(tenant.id)
    )
    assert [p.id for p in listed_by_id.projects] == [created.project.id]
    fetched = await stack.stubs.projects.GetProject(
        project_service_pb2.GetProjectRequest(project_id=created.project.id), metadata=slug
    )
    assert fetched.project.name == "via-slug"


async def test_tenant_id_header_wins_over_slug(stack: Stack) -> None:
    """Both headers: the id decides; a contradicting slug never reroutes the call."""
    first, second = await register_active(stack.stubs), await register_active(stack.stubs)
    metadata = ((TENANT_ID_HEADER, first.id), (TENANT_SLUG_HEADER, second.slug))
    await stack.stubs.projects.CreateProject(project_service_pb2.CreateProjectRequest(name="first"), metadata=metadata)
    second_projects = await stack.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=by_id(second.id)
    )
    assert list(second_projects.projects) == []


# --- schema vanished mid-request -----------------------------------------------------


async def test_schema_dropped_under_active_tenant_is_tenant_deleted(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    metadata = by_id(tenant.id)
    # Warm the statement caches on pooled connections for this schema first.
    for _ in range(3):
        await stack.stubs.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=f"warm-{uuid.uuid4().hex[:6]}"), metadata=metadata
        )
        await stack.stubs.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata)

    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{tenant.schema_name}" CASCADE'))
        state = (await conn.execute(text("SELECT state FROM tenants WHERE id = :id"), {"id": tenant.id})).scalar_one()
    assert state == "ACTIVE"  # the row still says ACTIVE: only the data is gone

    for _ in range(3):
        await expect_error(
            stack.stubs.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata),
            grpc.StatusCode.NOT_FOUND,
            "TENANT_DELETED",
        )
        await expect_error(
            stack.stubs.projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name="late"), metadata=metadata
            ),
            grpc.StatusCode.NOT_FOUND,
            "TENANT_DELETED",
        )
        await expect_error(
            stack.stubs.projects.GetProject(
                project_service_pb2.GetProjectRequest(project_id=str(uuid.uuid4())), metadata=metadata
            ),
            grpc.StatusCode.NOT_FOUND,
            "TENANT_DELETED",
        )
        await expect_error(
            stack.stubs.projects.DeleteProject(
                project_service_pb2.DeleteProjectRequest(project_id=str(uuid.uuid4())), metadata=metadata
            ),
            grpc.StatusCode.NOT_FOUND,
            "TENANT_DELETED",
        )


# --- pooled connections lost under the gate -------------------------------------------


async def test_lost_pooled_connections_are_unavailable_once_then_replaced(
    stack: Stack, engine: AsyncEngine, database_url: str, temporal_client: Client
) -> None:
    """The backends behind every pooled connection are terminated (a database
    restart or failover): the call that meets a dead connection in the gate's
    admission query is UNAVAILABLE DATABASE_UNAVAILABLE, never INTERNAL, and
    the whole pool is replaced, so the calls after it succeed."""
    tenant = await register_active(stack.stubs)
    metadata = by_id(tenant.id)
    small = create_engine(database_url, pool_size=2, max_overflow=0)

    async def list_projects() -> grpc.StatusCode:
        try:
            await api.stubs.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, f"{error.code()}: {error.details()}"
            assert error_info(error).reason == "DATABASE_UNAVAILABLE"
            return error.code()
        return grpc.StatusCode.OK

    try:
        async with running_stack(engine=small, client=temporal_client, with_worker=False) as api:
            seen: list[grpc.StatusCode] = []
            # The API's health watcher shares the pool and may meet a dead
            # connection first (then the call is OK): a few rounds make sure a
            # call meets one.
            for _ in range(5):
                async with small.connect() as first, small.connect() as second:
                    backends = [await conn.scalar(text("SELECT pg_backend_pid()")) for conn in (first, second)]
                async with engine.connect() as admin:
                    for pid in backends:
                        assert await admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                seen.append(await list_projects())
                # Both dead connections are gone, not just the one a call met.
                assert [await list_projects(), await list_projects()] == [grpc.StatusCode.OK] * 2
                if grpc.StatusCode.UNAVAILABLE in seen:
                    break
            assert grpc.StatusCode.UNAVAILABLE in seen, seen
    finally:
        await small.dispose()


# --- the gate is declared in the contract ------------------------------------------


def test_gate_is_declared_by_the_proto_option() -> None:
    assert is_tenant_scoped("/tenantry.v1.ProjectService/ListProjects")
    assert is_tenant_scoped("/tenantry.v1.ProjectService/CreateProject")
    assert not is_tenant_scoped("/tenantry.v1.TenantService/RegisterTenant")
    assert not is_tenant_scoped("/tenantry.v1.TenantService/DeleteTenant")
    assert not is_tenant_scoped("/tenantry.v1.OperationService/GetOperation")
    assert not is_tenant_scoped("/grpc.health.v1.Health/Check")
    assert not is_tenant_scoped("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not is_tenant_scoped("/no.such.Service/Method")

    services = {
        "ProjectService": project_service_pb2.DESCRIPTOR.services_by_name["ProjectService"],
        "TenantService": tenant_service_pb2.DESCRIPTOR.services_by_name["TenantService"],
        "OperationService": operation_service_pb2.DESCRIPTOR.services_by_name["OperationService"],
    }
    scoped: dict[str, bool] = {
        name: service.GetOptions().Extensions[options_pb2.tenant_scoped]  # type: ignore[index]
        for name, service in services.items()
    }
    assert scoped == {"ProjectService": True, "TenantService": False, "OperationService": False}


async def test_non_tenant_services_need_no_tenant_metadata(stack: Stack) -> None:
    listed = await stack.stubs.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(page_size=1))
    assert len(listed.tenants) <= 1

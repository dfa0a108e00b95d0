"""The happy path over real gRPC, PostgreSQL and Temporal."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.v1 import operation_pb2, project_service_pb2, tenant_pb2, tenant_service_pb2
from tests.stack import Stack, registration, wait_done


async def test_register_reaches_active_with_schema_and_projects(stack: Stack, engine: AsyncEngine) -> None:
    response = await stack.stubs.tenants.RegisterTenant(registration())
    assert response.tenant.state == tenant_pb2.TENANT_STATE_CREATING
    assert response.operation.kind == operation_pb2.OPERATION_KIND_PROVISION
    operation = await wait_done(stack.stubs, response.operation.name)
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED

    tenant = (
        await stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id))
    ).tenant
    assert tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert tenant.schema_name == "t_" + response.tenant.id.replace("-", "")

    async with engine.connect() as conn:
        tables = set(
            (
                await conn.execute(
                    text("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = :s"), {"s": tenant.schema_name}
                )
            ).scalars()
        )
    assert {"projects", "alembic_version"} <= tables

    metadata = (("x-tenant-id", tenant.id),)
    created = await stack.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="Apollo", description="to the moon"), metadata=metadata
    )
    listed = await stack.stubs.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata)
    assert [p.name for p in listed.projects] == ["Apollo"]
    assert listed.projects[0].id == created.project.id

"""ProjectService inside an ACTIVE tenant over real gRPC and PostgreSQL: CRUD,
names unique per tenant, pagination, and invalid names and descriptions. The
tenant gate in front of it is tested in test_tenant_gate.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import grpc
import pytest

from tenantry.v1 import project_service_pb2, tenant_pb2, tenant_service_pb2
from tests.stack import Stack, by_id, error_info, expect_error, field_violations, register_active


async def test_project_crud_in_a_tenant(stack: Stack) -> None:
    tenant = await register_active(stack.stubs)
    metadata = by_id(tenant.id)
    projects = stack.stubs.projects

    created = (
        await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name="  Apollo  ", description="to the moon\nand back"),
            metadata=metadata,
        )
    ).project
    assert created.name == "Apollo"
    assert created.description == "to the moon\nand back"
    assert uuid.UUID(created.id)
    assert created.HasField("create_time")

    duplicate = await expect_error(
        projects.CreateProject(project_service_pb2.CreateProjectRequest(name="Apollo"), metadata=metadata),
        grpc.StatusCode.ALREADY_EXISTS,
        "PROJECT_NAME_TAKEN",
    )
    assert error_info(duplicate).metadata["name"] == "Apollo"

    fetched = (
        await projects.GetProject(project_service_pb2.GetProjectRequest(project_id=created.id), metadata=metadata)
    ).project
    assert fetched == created

    await expect_error(
        projects.GetProject(project_service_pb2.GetProjectRequest(project_id=str(uuid.uuid4())), metadata=metadata),
        grpc.StatusCode.NOT_FOUND,
        "PROJECT_NOT_FOUND",
    )
    bad_id = await expect_error(
        projects.GetProject(project_service_pb2.GetProjectRequest(project_id="nope"), metadata=metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert "project_id" in field_violations(bad_id)

    await projects.DeleteProject(project_service_pb2.DeleteProjectRequest(project_id=created.id), metadata=metadata)
    await expect_error(
        projects.DeleteProject(project_service_pb2.DeleteProjectRequest(project_id=created.id), metadata=metadata),
        grpc.StatusCode.NOT_FOUND,
        "PROJECT_NOT_FOUND",
    )
    await expect_error(
        projects.GetProject(project_service_pb2.GetProjectRequest(project_id=created.id), metadata=metadata),
        grpc.StatusCode.NOT_FOUND,
        "PROJECT_NOT_FOUND",
    )
    # The name is free again once the project is gone.
    await projects.CreateProject(project_service_pb2.CreateProjectRequest(name="Apollo"), metadata=metadata)


async def test_project_names_are_per_tenant(stack: Stack) -> None:
    first, second = await register_active(stack.stubs), await register_active(stack.stubs)
    for tenant in (first, second):
        await stack.stubs.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name="shared-name"), metadata=by_id(tenant.id)
        )
    # A project id of one tenant is unknown in the other.
    first_project = (
        await stack.stubs.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=by_id(first.id))
    ).projects[0]
    await expect_error(
        stack.stubs.projects.GetProject(
            project_service_pb2.GetProjectRequest(project_id=first_project.id), metadata=by_id(second.id)
        ),
        grpc.StatusCode.NOT_FOUND,
        "PROJECT_NOT_FOUND",
    )


async def test_list_projects_pagination(stack: Stack) -> None:
    tenant = await register_active(stack.stubs)
    metadata = by_id(tenant.id)
    names = [f"project-{i:02d}" for i in range(7)]
    for name in names:
        await stack.stubs.projects.CreateProject(project_service_pb2.CreateProjectRequest(name=name), metadata=metadata)

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stack.stubs.projects.ListProjects(
            project_service_pb2.ListProjectsRequest(page_size=3, page_token=token), metadata=metadata
        )
        pages += 1
        assert len(page.projects) <= 3
        seen.extend(p.name for p in page.projects)
        token = page.next_page_token
        if not token:
            break
        assert pages < 10
    assert seen == names  # creation order, no duplicates, none missing
    assert pages == 3

    everything = await stack.stubs.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata)
    assert [p.name for p in everything.projects] == names
    assert everything.next_page_token == ""

    exact = await stack.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(page_size=7), metadata=metadata
    )
    assert len(exact.projects) == 7 and exact.next_page_token == ""

    for request in (
        project_service_pb2.ListProjectsRequest(page_size=-1),
        project_service_pb2.ListProjectsRequest(page_token="garbage!"),
    ):
        await expect_error(
            stack.stubs.projects.ListProjects(request, metadata=metadata),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
    # A token of ListTenants is not a token of ListProjects.
    tenants_page = await stack.stubs.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(page_size=1))
    if tenants_page.next_page_token:
        await expect_error(
            stack.stubs.projects.ListProjects(
                project_service_pb2.ListProjectsRequest(page_token=tenants_page.next_page_token), metadata=metadata
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )


INVALID_PROJECT_NAMES: Sequence[str] = (
    "",
    "   ",
    "bad\x00name",
    "tab\tname",
    "line\nbreak",
    "x" * 101,
    "del\x7f",
    "\u2800",  # braille pattern blank only
    "\u3164\u3164",  # Hangul fillers only
    "zero\u200dwidth",
    "\ufeffbom",
    "private\ue000",
)


@pytest.fixture(scope="module")
async def empty_tenant(stack: Stack) -> tenant_pb2.Tenant:
    """One ACTIVE tenant in which nothing is ever created successfully."""
    return await register_active(stack.stubs)


@pytest.mark.parametrize("name", INVALID_PROJECT_NAMES)
async def test_invalid_project_name_is_invalid_argument(
    stack: Stack, empty_tenant: tenant_pb2.Tenant, name: str
) -> None:
    tenant = empty_tenant
    error = await expect_error(
        stack.stubs.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=name), metadata=by_id(tenant.id)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert "name" in field_violations(error)
    listed = await stack.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=by_id(tenant.id)
    )
    assert list(listed.projects) == []


async def test_invalid_description_is_invalid_argument(stack: Stack, empty_tenant: tenant_pb2.Tenant) -> None:
    tenant = empty_tenant
    for description in ("x" * 2001, "bell\x07", "zero\u200bwidth", "\u2800\u2800", "rtl\u202eoverride"):
        error = await expect_error(
            stack.stubs.projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name="ok", description=description), metadata=by_id(tenant.id)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
        assert "description" in field_violations(error)

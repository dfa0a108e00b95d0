"""After its commit, RegisterTenant answers OK whatever goes wrong with the
workflow start: the change is already durable. The RUNNING mark is the
worker's bookkeeping: its failure never fails provisioning."""

from __future__ import annotations

import dataclasses
import uuid

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from provisioner_worker.activities import TenantActivities
from tenantry.db.engine import create_engine
from tenantry.v1 import operation_pb2, operation_service_pb2, project_service_pb2, tenant_pb2
from tests.stack import BUG_CODES, Stack, error_info, field_violations, registration, running_stack, wait_done


async def test_provisioning_finishes_when_marking_running_fails(stack: Stack, engine: AsyncEngine) -> None:
    prefix = f"bk{uuid.uuid4().hex[:8]}"
    # Real fault injection: PostgreSQL refuses PENDING -> RUNNING for our tenants.
    async with engine.begin() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION {prefix}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.state = 'RUNNING' AND EXISTS (
                    SELECT 1 FROM tenants WHERE id = NEW.tenant_id AND slug LIKE '{prefix}-%') THEN
                    RAISE EXCEPTION 'injected bookkeeping failure';
                END IF;
                RETURN NEW;
            END $$""")
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {prefix}_refuse BEFORE UPDATE ON workflow_executions "
                f"FOR EACH ROW EXECUTE FUNCTION {prefix}_refuse()"
            )
        )
    try:
        response = await stack.stubs.tenants.RegisterTenant(registration(f"{prefix}-a"), timeout=30)
        assert response.tenant.state == tenant_pb2.TENANT_STATE_CREATING
        assert response.operation.state == operation_pb2.OPERATION_STATE_PENDING
        # The worker's RUNNING mark fails; its step goes on and finishes the operation.
        operation = await wait_done(stack.stubs, response.operation.name)
        assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {prefix}_refuse ON workflow_executions"))
            await conn.execute(text(f"DROP FUNCTION {prefix}_refuse()"))


async def test_running_mark_commits_asynchronously_for_itself_only(database_url: str, temporal_client: Client) -> None:
    """The worker's RUNNING mark turns synchronous_commit off for its own
    transaction: the connection it ran on (the only one here) commits the
    provisioning itself synchronously again."""
    small = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with running_stack(engine=small, client=temporal_client, with_worker=False) as api:
            response = await api.stubs.tenants.RegisterTenant(registration(), timeout=30)
            assert response.operation.state == operation_pb2.OPERATION_STATE_PENDING
        workflow_id = response.operation.name.removeprefix("operations/")
        environment = ActivityEnvironment()
        environment.info = dataclasses.replace(environment.info, workflow_id=workflow_id)
        activities = TenantActivities(small, temporal_client)
        await environment.run(activities._mark_running, workflow_id)
        async with small.connect() as conn:
            assert await conn.scalar(text("SHOW synchronous_commit")) == "on"
            state = await conn.scalar(
                text("SELECT state FROM workflow_executions WHERE workflow_id = :w"), {"w": workflow_id}
            )
        assert state == "RUNNING"
    finally:
        await small.dispose()


async def test_wait_operation_clamps_huge_timeouts_and_rejects_bad_nanos(stack: Stack) -> None:
    done = await wait_done(stack.stubs, (await stack.stubs.tenants.RegisterTenant(registration())).operation.name)
    for seconds in (10**14, 315_576_000_000):
        response = await stack.stubs.operations.WaitOperation(
            operation_service_pb2.WaitOperationRequest(name=done.name, timeout=Duration(seconds=seconds)), timeout=10
        )
        assert response.operation.done
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.stubs.operations.WaitOperation(
            operation_service_pb2.WaitOperationRequest(name=done.name, timeout=Duration(seconds=1, nanos=2 * 10**9))
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "timeout" in field_violations(raised.value)


@pytest.mark.parametrize(
    ("metadata", "reason", "field"),
    [
        ((), "TENANT_REQUIRED", "x-tenant-id"),
        ((("x-tenant-id", "nope"),), "INVALID_TENANT_ID", "x-tenant-id"),
        ((("x-tenant-slug", "Bad Slug"),), "INVALID_TENANT_ID", "x-tenant-slug"),
    ],
)
async def test_bad_tenant_metadata_names_the_header(
    stack: Stack, metadata: tuple[tuple[str, str], ...], reason: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.stubs.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.code() not in BUG_CODES
    assert error_info(raised.value).reason == reason
    assert field in field_violations(raised.value)

"""Retention and undelete, PurgeTenant, RetryTenantProvisioning, reusable slugs
and the one-open-operation rule, over real gRPC, PostgreSQL and Temporal.

The purge and an undelete lock the tenant row and read the same clock (the
database's), so exactly one of them wins: tested in both orders, in a race
forced by a lock the test holds, and against the retention timer itself."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenantry.v1 import operation_pb2, operation_service_pb2, project_service_pb2, tenant_pb2, tenant_service_pb2
from tests.stack import (
    BUG_CODES,
    Stack,
    Stubs,
    by_id,
    delete_and_purge,
    error_info,
    eventually,
    expect_error,
    failing_provisioning_stack,
    register_active,
    registration,
    running_stack,
    schema_exists,
    wait_done,
)

OK = grpc.StatusCode.OK
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
SHORT_RETENTION = timedelta(seconds=2)


@pytest.fixture(scope="module")
async def short_retention_stack(engine: AsyncEngine, temporal_client: Client) -> AsyncIterator[Stack]:
    async with running_stack(engine=engine, client=temporal_client, deletion_retention=SHORT_RETENTION) as stack:
        yield stack


async def get(stubs: Stubs, tenant_id: str) -> tenant_pb2.Tenant:
    return (await stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id), timeout=10)).tenant


async def delete(stubs: Stubs, tenant_id: str, **fields: str) -> tenant_service_pb2.DeleteTenantResponse:
    request = tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant_id, **fields)
    return await stubs.tenants.DeleteTenant(request, timeout=30)


async def undelete(stubs: Stubs, tenant_id: str, **fields: str) -> tenant_pb2.Tenant:
    request = tenant_service_pb2.UndeleteTenantRequest(tenant_id=tenant_id, **fields)
    return (await stubs.tenants.UndeleteTenant(request, timeout=30)).tenant


async def purge(stubs: Stubs, tenant_id: str, **fields: str) -> tenant_service_pb2.PurgeTenantResponse:
    request = tenant_service_pb2.PurgeTenantRequest(tenant_id=tenant_id, **fields)
    return await stubs.tenants.PurgeTenant(request, timeout=30)


async def operation(stubs: Stubs, name: str) -> operation_pb2.Operation:
    request = operation_service_pb2.GetOperationRequest(name=name)
    return (await stubs.operations.GetOperation(request, timeout=10)).operation


async def event_types(engine: AsyncEngine, tenant_id: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT type FROM tenant_events WHERE tenant_id = :t ORDER BY sequence"), {"t": uuid.UUID(tenant_id)}
        )
        return [row.type for row in rows]


async def create_projects(stubs: Stubs, tenant_id: str, count: int) -> set[str]:
    names = {f"p-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)}
    for name in names:
        await stubs.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=name), metadata=by_id(tenant_id), timeout=10
        )
    return names


async def project_names(stubs: Stubs, tenant_id: str) -> set[str]:
    listed = await stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(page_size=500), metadata=by_id(tenant_id), timeout=10
    )
    return {p.name for p in listed.projects}


async def assert_purged(engine: AsyncEngine, stubs: Stubs, tenant: tenant_pb2.Tenant) -> None:
    assert (await get(stubs, tenant.id)).state == tenant_pb2.TENANT_STATE_DELETED
    assert not await schema_exists(engine, tenant.schema_name)


# --- undelete ----------------------------------------------------------------------------


async def test_undelete_restores_the_tenant_with_every_row(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    names = await create_projects(stack.stubs, tenant.id, 5)
    deleted = await delete(stack.stubs, tenant.id)

    # Soft-deleted: refused by the gate, with when its data goes.
    error = await expect_error(
        stack.stubs.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=by_id(tenant.id)),
        FAILED_PRECONDITION,
        "TENANT_DELETING",
    )
    assert error_info(error).metadata["purge_time"].startswith(str(deleted.tenant.purge_time.ToDatetime().year))

    restored = await undelete(stack.stubs, tenant.id, etag=deleted.tenant.etag)
    assert restored.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert not restored.HasField("delete_time") and not restored.HasField("purge_time")
    assert restored.etag not in (tenant.etag, deleted.tenant.etag)
    assert await project_names(stack.stubs, tenant.id) == names

    # The deletion ended CANCELLED, and its workflow finished without purging.
    cancelled = await wait_done(stack.stubs, deleted.operation.name)
    assert cancelled.state == operation_pb2.OPERATION_STATE_CANCELLED
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED", "DELETED", "UNDELETED"]
    assert await schema_exists(engine, tenant.schema_name)

    # Deleted again: a new operation with its own id; purged this time.
    again = await delete(stack.stubs, tenant.id)
    assert again.operation.name != deleted.operation.name
    assert (await delete_and_purge(stack.stubs, tenant.id)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
    await assert_purged(engine, stack.stubs, tenant)
    # Names already issued keep resolving.
    assert (await operation(stack.stubs, deleted.operation.name)).state == operation_pb2.OPERATION_STATE_CANCELLED


async def test_undelete_restores_a_suspended_tenant_as_suspended(stack: Stack) -> None:
    tenant = await register_active(stack.stubs)
    await stack.stubs.tenants.SuspendTenant(
        tenant_service_pb2.SuspendTenantRequest(tenant_id=tenant.id, reason="unpaid invoice"), timeout=30
    )
    await delete(stack.stubs, tenant.id)
    restored = await undelete(stack.stubs, tenant.id)
    assert restored.state == tenant_pb2.TENANT_STATE_SUSPENDED
    assert restored.state_message == "unpaid invoice"


async def test_undelete_and_purge_refuse_what_they_cannot_do(
    stack: Stack, idle_stack: Stack, engine: AsyncEngine, temporal_client: Client
) -> None:
    tenant = await register_active(stack.stubs)
    before = await get(stack.stubs, tenant.id)
    # Never deleted: nothing to undo, nothing to purge.
    for call in (undelete(stack.stubs, tenant.id), purge(stack.stubs, tenant.id)):
        error = await expect_error(call, FAILED_PRECONDITION, "WRONG_TENANT_STATE")
        assert error_info(error).metadata["state"] == "ACTIVE"
    assert await get(stack.stubs, tenant.id) == before
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED"]

    # A stale etag changes nothing.
    deleted = await delete(stack.stubs, tenant.id)
    await expect_error(undelete(stack.stubs, tenant.id, etag=before.etag), grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert (await get(stack.stubs, tenant.id)).state == tenant_pb2.TENANT_STATE_DELETING

    # Deleted while CREATING (nothing retained: its purge is due at once).
    creating = await idle_stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
    gone = await delete(idle_stack.stubs, creating.tenant.id)
    assert gone.tenant.purge_time == gone.tenant.delete_time
    await expect_error(undelete(idle_stack.stubs, creating.tenant.id), FAILED_PRECONDITION, "WRONG_TENANT_STATE")

    # Unknown tenants and malformed ids.
    await expect_error(undelete(stack.stubs, str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")
    await expect_error(purge(stack.stubs, "nope"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert (await delete_and_purge(stack.stubs, tenant.id)).name == deleted.operation.name


async def test_undelete_then_purge_and_purge_then_undelete(stack: Stack, engine: AsyncEngine) -> None:
    # Undelete first: the purge request then finds nothing to purge.
    first = await register_active(stack.stubs)
    names = await create_projects(stack.stubs, first.id, 3)
    await delete(stack.stubs, first.id)
    await undelete(stack.stubs, first.id)
    await expect_error(purge(stack.stubs, first.id), FAILED_PRECONDITION, "WRONG_TENANT_STATE")
    await asyncio.sleep(1.0)  # a late wake-up of the old deletion workflow must not purge
    assert await project_names(stack.stubs, first.id) == names

    # Purge first: the undelete comes too late, whether or not the purge has committed yet.
    second = await register_active(stack.stubs)
    deleted = await delete(stack.stubs, second.id)
    purged = await purge(stack.stubs, second.id)
    assert purged.operation.name == deleted.operation.name
    await expect_error(undelete(stack.stubs, second.id), FAILED_PRECONDITION, "WRONG_TENANT_STATE")
    assert (await wait_done(stack.stubs, deleted.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
    await assert_purged(engine, stack.stubs, second)
    assert await event_types(engine, second.id) == ["REGISTERED", "ACTIVATED", "DELETED", "PURGED"]
    # A repeated PurgeTenant request_id returns the original answer, even now.
    request_id = str(uuid.uuid4())
    third = await register_active(stack.stubs)
    await delete(stack.stubs, third.id)
    original = await purge(stack.stubs, third.id, request_id=request_id)
    await wait_done(stack.stubs, original.operation.name)
    assert await purge(stack.stubs, third.id, request_id=request_id) == original


async def test_purge_and_undelete_racing_on_the_row_exactly_one_wins(stack: Stack, engine: AsyncEngine) -> None:
    """Both calls queue behind a lock the test holds on the tenant row, then
    race: exactly one succeeds, and the tenant ends in that one's state."""
    tenants = [await register_active(stack.stubs) for _ in range(8)]
    rows = {t.id: await create_projects(stack.stubs, t.id, 2) for t in tenants}
    for tenant in tenants:
        await delete(stack.stubs, tenant.id)

    outcomes: Counter[str] = Counter()
    for i, tenant in enumerate(tenants):
        async with engine.connect() as holder:
            await holder.execute(text("SELECT 1 FROM tenants WHERE id = :t FOR UPDATE"), {"t": uuid.UUID(tenant.id)})
            calls = [purge(stack.stubs, tenant.id), undelete(stack.stubs, tenant.id)]
            if i % 2:
                calls.reverse()
            racing = asyncio.gather(*calls, return_exceptions=True)
            await asyncio.sleep(0.3)  # both are waiting for the row
            await holder.rollback()
            results = await racing
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(errors) == 1, results
        assert errors[0].code() == FAILED_PRECONDITION, errors[0]
        assert error_info(errors[0]).reason == "WRONG_TENANT_STATE"
        undeleted = not isinstance(results[1 - (i % 2)], grpc.aio.AioRpcError)
        if undeleted:
            outcomes["undelete"] += 1
            assert (await get(stack.stubs, tenant.id)).state == tenant_pb2.TENANT_STATE_ACTIVE
            assert await project_names(stack.stubs, tenant.id) == rows[tenant.id]
        else:
            outcomes["purge"] += 1
            deletion = (await purge_response_of(stack.stubs, tenant.id)).name
            assert (await wait_done(stack.stubs, deletion)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
            assert (await get(stack.stubs, tenant.id)).state == tenant_pb2.TENANT_STATE_DELETED
            assert not await schema_exists(engine, tenant.schema_name)
    assert sum(outcomes.values()) == len(tenants)
    # Undeleted tenants stay undeleted: no purge arrives late.
    await asyncio.sleep(1.0)
    for tenant in tenants:
        state = (await get(stack.stubs, tenant.id)).state
        assert state in (tenant_pb2.TENANT_STATE_ACTIVE, tenant_pb2.TENANT_STATE_DELETED)
        assert (state == tenant_pb2.TENANT_STATE_ACTIVE) == await schema_exists(engine, tenant.schema_name)


async def purge_response_of(stubs: Stubs, tenant_id: str) -> operation_pb2.Operation:
    """The tenant's latest deletion operation."""
    listed = await stubs.operations.ListOperations(
        operation_service_pb2.ListOperationsRequest(tenant_id=tenant_id, page_size=100), timeout=10
    )
    deletions = [op for op in listed.operations if op.kind == operation_pb2.OPERATION_KIND_DELETE]
    return max(deletions, key=lambda op: op.create_time.ToNanoseconds())


# --- the retention timer -------------------------------------------------------------------


async def test_the_retention_timer_purges_without_being_asked(
    short_retention_stack: Stack, engine: AsyncEngine
) -> None:
    stubs = short_retention_stack.stubs
    tenant = await register_active(stubs)
    deleted = await delete(stubs, tenant.id)
    retained = deleted.tenant.purge_time.ToMilliseconds() - deleted.tenant.delete_time.ToMilliseconds()
    assert retained == SHORT_RETENTION.total_seconds() * 1000
    assert await schema_exists(engine, tenant.schema_name)
    done = await wait_done(stubs, deleted.operation.name, timeout=30)
    assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    await assert_purged(engine, stubs, tenant)
    # Not before its time (the database's clock decides).
    assert done.end_time.ToMilliseconds() >= deleted.tenant.purge_time.ToMilliseconds()


async def test_undelete_racing_the_timer_exactly_one_wins(short_retention_stack: Stack, engine: AsyncEngine) -> None:
    stubs = short_retention_stack.stubs
    tenants = [await register_active(stubs) for _ in range(6)]
    deletions = [await delete(stubs, t.id) for t in tenants]
    rng = random.Random(7)
    results: list[tenant_pb2.Tenant | grpc.aio.AioRpcError] = []
    for tenant, deleted in zip(tenants, deletions, strict=True):
        # Aim at the purge time, a little before or after.
        results.append(await _undelete_at(stubs, tenant.id, deleted, rng.uniform(-0.15, 0.15)))
    await asyncio.sleep(SHORT_RETENTION.total_seconds() + 1)
    for tenant, deleted, result in zip(tenants, deletions, results, strict=True):
        if isinstance(result, grpc.aio.AioRpcError):
            # Too late: the purge was due (or already done).
            assert (result.code(), error_info(result).reason) in {
                (FAILED_PRECONDITION, "WRONG_TENANT_STATE"),
                (grpc.StatusCode.NOT_FOUND, "TENANT_DELETED"),
            }, result
            assert (await wait_done(stubs, deleted.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
            await assert_purged(engine, stubs, tenant)
        else:
            assert result.state == tenant_pb2.TENANT_STATE_ACTIVE
            assert (await wait_done(stubs, deleted.operation.name)).state == operation_pb2.OPERATION_STATE_CANCELLED
            assert (await get(stubs, tenant.id)).state == tenant_pb2.TENANT_STATE_ACTIVE
            assert await schema_exists(engine, tenant.schema_name)


async def _undelete_at(
    stubs: Stubs, tenant_id: str, deleted: tenant_service_pb2.DeleteTenantResponse, offset: float
) -> tenant_pb2.Tenant | grpc.aio.AioRpcError:
    """UndeleteTenant `offset` seconds from the tenant's purge time (by this
    machine's clock, which is the database's: both run here)."""
    purge_at = deleted.tenant.purge_time.ToNanoseconds() / 1e9
    await asyncio.sleep(max(0.0, purge_at + offset - time.time()))
    try:
        return await undelete(stubs, tenant_id)
    except grpc.aio.AioRpcError as error:
        return error


# --- undelete under load ----------------------------------------------------------------


async def test_callers_hammering_while_delete_and_undelete_alternate(stack: Stack, engine: AsyncEngine) -> None:
    """8 callers on ProjectService while the tenant is deleted and undeleted
    five times: only OK or TENANT_DELETING, never a bug code, and every
    acknowledged project is there at the end."""
    tenant = await register_active(stack.stubs)
    acknowledged = await create_projects(stack.stubs, tenant.id, 3)
    project_ids = [
        p.id
        for p in (
            await stack.stubs.projects.ListProjects(
                project_service_pb2.ListProjectsRequest(), metadata=by_id(tenant.id), timeout=10
            )
        ).projects
    ]
    outcomes: Counter[tuple[grpc.StatusCode, str]] = Counter()
    stop = asyncio.Event()

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while not stop.is_set():
            n += 1
            method = rng.choice(["create", "list", "get"])
            try:
                if method == "create":
                    name = f"c{seed}-{n}"
                    await stack.stubs.projects.CreateProject(
                        project_service_pb2.CreateProjectRequest(name=name), metadata=by_id(tenant.id), timeout=20
                    )
                    acknowledged.add(name)
                elif method == "list":
                    await stack.stubs.projects.ListProjects(
                        project_service_pb2.ListProjectsRequest(), metadata=by_id(tenant.id), timeout=20
                    )
                else:
                    await stack.stubs.projects.GetProject(
                        project_service_pb2.GetProjectRequest(project_id=rng.choice(project_ids)),
                        metadata=by_id(tenant.id),
                        timeout=20,
                    )
                outcomes[(OK, "")] += 1
            except grpc.aio.AioRpcError as error:
                outcomes[(error.code(), error_info(error).reason)] += 1

    async with asyncio.timeout(120):
        tasks = [asyncio.create_task(caller(i)) for i in range(8)]
        try:
            for _ in range(5):
                await asyncio.sleep(0.3)
                await delete(stack.stubs, tenant.id)
                await asyncio.sleep(0.3)
                assert (await undelete(stack.stubs, tenant.id)).state == tenant_pb2.TENANT_STATE_ACTIVE
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            crashed = [r for r in await asyncio.gather(*tasks, return_exceptions=True) if r is not None]
    assert not crashed, crashed
    assert not [o for o in outcomes if o[0] in BUG_CODES], outcomes
    assert set(outcomes) <= {(OK, ""), (FAILED_PRECONDITION, "TENANT_DELETING")}, outcomes
    assert outcomes[(FAILED_PRECONDITION, "TENANT_DELETING")] > 0 and outcomes[(OK, "")] > 0, outcomes
    assert await project_names(stack.stubs, tenant.id) == acknowledged
    kinds = Counter(
        (op.kind, op.state)
        for op in (
            await stack.stubs.operations.ListOperations(
                operation_service_pb2.ListOperationsRequest(tenant_id=tenant.id, page_size=100)
            )
        ).operations
    )
    assert kinds[(operation_pb2.OPERATION_KIND_DELETE, operation_pb2.OPERATION_STATE_CANCELLED)] == 5, kinds


# --- retry --------------------------------------------------------------------------------


async def test_retry_provisioning_takes_a_failed_tenant_back_to_creating(
    stack: Stack, engine: AsyncEngine, temporal_client: Client
) -> None:
    async with failing_provisioning_stack(engine=engine, client=temporal_client, message="injected") as failing:
        registered = await failing.stubs.tenants.RegisterTenant(registration(), timeout=30)
        assert (await wait_done(failing.stubs, registered.operation.name)).state == operation_pb2.OPERATION_STATE_FAILED
    tenant = await get(stack.stubs, registered.tenant.id)
    assert tenant.state == tenant_pb2.TENANT_STATE_FAILED

    request_id = str(uuid.uuid4())
    request = tenant_service_pb2.RetryTenantProvisioningRequest(
        tenant_id=tenant.id, etag=tenant.etag, request_id=request_id
    )
    retried = await stack.stubs.tenants.RetryTenantProvisioning(request, timeout=30)
    assert retried.tenant.state == tenant_pb2.TENANT_STATE_CREATING
    assert retried.tenant.state_message == ""
    assert retried.operation.kind == operation_pb2.OPERATION_KIND_PROVISION
    assert retried.operation.state == operation_pb2.OPERATION_STATE_PENDING
    assert retried.operation.name != registered.operation.name
    # A repeat returns the same operation.
    again = await stack.stubs.tenants.RetryTenantProvisioning(request, timeout=30)
    assert again.operation.name == retried.operation.name

    assert (await wait_done(stack.stubs, retried.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
    active = await get(stack.stubs, tenant.id)
    assert active.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert await schema_exists(engine, active.schema_name)
    assert (await operation(stack.stubs, registered.operation.name)).state == operation_pb2.OPERATION_STATE_FAILED
    assert await event_types(engine, tenant.id) == [
        "REGISTERED",
        "PROVISIONING_FAILED",
        "PROVISIONING_RETRIED",
        "ACTIVATED",
    ]
    # Only a FAILED tenant can be retried.
    error = await expect_error(
        stack.stubs.tenants.RetryTenantProvisioning(
            tenant_service_pb2.RetryTenantProvisioningRequest(tenant_id=tenant.id), timeout=30
        ),
        FAILED_PRECONDITION,
        "WRONG_TENANT_STATE",
    )
    assert error_info(error).metadata["state"] == "ACTIVE"


# --- slugs -----------------------------------------------------------------------------------


async def test_a_purged_tenants_slug_can_be_registered_again(stack: Stack, engine: AsyncEngine) -> None:
    slug = f"reuse-{uuid.uuid4().hex[:8]}"
    first = (await stack.stubs.tenants.RegisterTenant(registration(slug), timeout=30)).tenant
    await wait_done(stack.stubs, f"operations/tenant-provision-{first.id}")
    # Held while the tenant is alive or only soft-deleted.
    await delete(stack.stubs, first.id)
    await expect_error(
        stack.stubs.tenants.RegisterTenant(registration(slug), timeout=30),
        grpc.StatusCode.ALREADY_EXISTS,
        "TENANT_SLUG_TAKEN",
    )
    await delete_and_purge(stack.stubs, first.id)

    second = (await stack.stubs.tenants.RegisterTenant(registration(slug), timeout=30)).tenant
    assert second.id != first.id
    by_slug = (await stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(slug=slug))).tenant
    assert by_slug.id == second.id  # the holder now
    await wait_done(stack.stubs, f"operations/tenant-provision-{second.id}")
    await delete_and_purge(stack.stubs, second.id)
    by_slug = (await stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(slug=slug))).tenant
    assert by_slug.id == second.id  # the most recently purged
    assert by_slug.state == tenant_pb2.TENANT_STATE_DELETED
    # The gate by slug answers for the most recent holder too.
    await expect_error(
        stack.stubs.projects.ListProjects(
            project_service_pb2.ListProjectsRequest(), metadata=(("x-tenant-slug", slug),)
        ),
        grpc.StatusCode.NOT_FOUND,
        "TENANT_DELETED",
    )


# --- one open lifecycle operation --------------------------------------------------------------


async def test_one_open_lifecycle_operation_per_tenant(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    # A move in progress (its workflow comes with shards): an open MOVE operation.
    move_id = f"tenant-move-{tenant.id}-test"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO workflow_executions (workflow_id, tenant_id, kind, state, actor) "
                "VALUES (:w, :t, 'MOVE', 'RUNNING', 'test')"
            ),
            {"w": move_id, "t": uuid.UUID(tenant.id)},
        )
    try:
        # The database refuses a second open lifecycle operation...
        with pytest.raises(IntegrityError, match="uq_workflow_executions_open_lifecycle"):
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO workflow_executions (workflow_id, tenant_id, kind, state, actor) "
                        "VALUES (:w, :t, 'DELETE', 'PENDING', 'test')"
                    ),
                    {"w": f"x-{uuid.uuid4()}", "t": uuid.UUID(tenant.id)},
                )
        # ...and DeleteTenant says which one, changing nothing.
        error = await expect_error(delete(stack.stubs, tenant.id), FAILED_PRECONDITION, "OPERATION_IN_PROGRESS")
        assert error_info(error).metadata["operation"] == f"operations/{move_id}"
        assert (await get(stack.stubs, tenant.id)) == tenant
        assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM workflow_executions WHERE workflow_id = :w"), {"w": move_id})


async def test_the_worker_writes_running(stack: Stack, engine: AsyncEngine) -> None:
    """RegisterTenant answers PENDING; the worker's first statement makes it
    RUNNING, seen here while the test holds the tenant row so the step cannot
    go further."""
    registered = await stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
    assert registered.operation.state == operation_pb2.OPERATION_STATE_PENDING
    async with engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM tenants WHERE id = :t FOR UPDATE"), {"t": uuid.UUID(registered.tenant.id)}
        )

        async def running() -> bool:
            got = await operation(stack.stubs, registered.operation.name)
            return got.state == operation_pb2.OPERATION_STATE_RUNNING and got.HasField("start_time")

        await eventually(running, timeout=30)
        assert (await get(stack.stubs, registered.tenant.id)).state == tenant_pb2.TENANT_STATE_CREATING
        await holder.rollback()
    assert (await wait_done(stack.stubs, registered.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED

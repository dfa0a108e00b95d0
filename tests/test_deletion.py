"""DeleteTenant end to end over real gRPC, PostgreSQL and Temporal: the soft
delete comes first, the deletion workflow drops the schema, and requests racing
the deletion only ever see OK, TENANT_DELETING or TENANT_DELETED."""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from provisioner_worker.activities import DELETION_NOT_REQUESTED, TenantActivities
from provisioner_worker.worker import activities_for
from tenant_api.headers import TENANT_ID_HEADER
from tenantry.v1 import (
    operation_pb2,
    operation_service_pb2,
    project_service_pb2,
    tenant_pb2,
    tenant_service_pb2,
)
from tenantry.workflow_contract import (
    DELETE_WORKFLOW,
    DeleteTenantInput,
    ProvisionTenantInput,
    provision_workflow_id,
)
from tests.stack import (
    BUG_CODES,
    Stack,
    Stubs,
    delete_and_purge,
    error_info,
    eventually,
    expect_error,
    failing_provisioning_stack,
    field_violations,
    register_active,
    registration,
    running_stack,
    schema_exists,
)
from tests.stack import wait_done as _wait_done

OK = grpc.StatusCode.OK


async def wait_done(stubs: Stubs, name: str, timeout: float = 60.0) -> operation_pb2.Operation:
    return await asyncio.wait_for(_wait_done(stubs, name, timeout), timeout + 10)


async def get_tenant(stubs: Stubs, tenant_id: str, expected: int | None = None) -> tenant_pb2.Tenant:
    tenant = (
        await stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id), timeout=10)
    ).tenant
    if expected is not None:
        assert tenant.state == expected, tenant
    return tenant


async def delete(stubs: Stubs, tenant_id: str) -> tenant_service_pb2.DeleteTenantResponse:
    return await stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant_id), timeout=30)


async def purge(stubs: Stubs, tenant_id: str) -> tenant_service_pb2.PurgeTenantResponse:
    return await stubs.tenants.PurgeTenant(tenant_service_pb2.PurgeTenantRequest(tenant_id=tenant_id), timeout=30)


async def membership_count(engine: AsyncEngine, tenant_id: str) -> int:
    async with engine.connect() as conn:
        count = await conn.execute(
            text("SELECT count(*) FROM tenant_memberships WHERE tenant_id = :t"), {"t": uuid.UUID(tenant_id)}
        )
        return int(count.scalar_one())


async def assert_purged(engine: AsyncEngine, tenant: tenant_pb2.Tenant) -> None:
    assert not await schema_exists(engine, tenant.schema_name)
    assert await membership_count(engine, tenant.id) == 0


@pytest.fixture(scope="module")
async def failing_stack(engine: AsyncEngine, temporal_client: Client) -> AsyncIterator[Stack]:
    async with failing_provisioning_stack(
        engine=engine, client=temporal_client, message="injected: cannot create schema"
    ) as failing:
        yield failing


# --- the basic contract -------------------------------------------------------------


async def test_delete_active_tenant_keeps_its_data_until_purged(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    assert await schema_exists(engine, tenant.schema_name)
    assert await membership_count(engine, tenant.id) == 1

    response = await delete(stack.stubs, tenant.id)
    assert response.tenant.id == tenant.id
    assert response.tenant.state == tenant_pb2.TENANT_STATE_DELETING
    assert response.tenant.HasField("delete_time")
    # Retained for the stack's retention (7 days), not purged.
    retained = response.tenant.purge_time.ToSeconds() - response.tenant.delete_time.ToSeconds()
    assert retained == 7 * 24 * 3600
    assert response.tenant.etag != tenant.etag
    assert response.operation.kind == operation_pb2.OPERATION_KIND_DELETE
    assert response.operation.tenant_id == tenant.id
    # Its own workflow id (a tenant may be deleted, undeleted and deleted again).
    assert response.operation.name.startswith(f"operations/tenant-delete-{tenant.id}-")
    # Recorded, not yet picked up: the worker writes RUNNING.
    assert response.operation.state == operation_pb2.OPERATION_STATE_PENDING
    assert not response.operation.done

    async def running() -> bool:
        got = await stack.stubs.operations.GetOperation(
            operation_service_pb2.GetOperationRequest(name=response.operation.name)
        )
        return got.operation.state == operation_pb2.OPERATION_STATE_RUNNING

    await eventually(running, timeout=30)
    # The workflow waits on its timer: the data stays.
    assert await schema_exists(engine, tenant.schema_name)
    assert await membership_count(engine, tenant.id) == 1
    await get_tenant(stack.stubs, tenant.id, tenant_pb2.TENANT_STATE_DELETING)

    purged = await purge(stack.stubs, tenant.id)
    assert purged.operation.name == response.operation.name
    assert purged.tenant.purge_time.ToSeconds() <= purged.tenant.update_time.ToSeconds() + 1
    operation = await wait_done(stack.stubs, response.operation.name)
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    assert operation.done and operation.error_message == ""
    assert operation.HasField("end_time")

    deleted = await get_tenant(stack.stubs, tenant.id, tenant_pb2.TENANT_STATE_DELETED)
    assert deleted.delete_time == response.tenant.delete_time
    await assert_purged(engine, tenant)

    # The provisioning operation keeps its own, earlier outcome.
    provision = await stack.stubs.operations.GetOperation(
        operation_service_pb2.GetOperationRequest(name=f"operations/{provision_workflow_id(uuid.UUID(tenant.id))}")
    )
    assert provision.operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED

    await expect_error(delete(stack.stubs, tenant.id), grpc.StatusCode.NOT_FOUND, "TENANT_DELETED")
    # GetTenant still answers for a DELETED tenant, by id and by slug.
    by_slug = await stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(slug=tenant.slug))
    assert by_slug.tenant.state == tenant_pb2.TENANT_STATE_DELETED


async def test_repeated_delete_while_deleting_returns_same_operation(
    stack: Stack, idle_stack: Stack, engine: AsyncEngine
) -> None:
    tenant = await register_active(stack.stubs)
    first = await delete(idle_stack.stubs, tenant.id)
    assert first.tenant.state == tenant_pb2.TENANT_STATE_DELETING

    again = await delete(idle_stack.stubs, tenant.id)
    assert again.operation.name == first.operation.name
    assert again.tenant.state == tenant_pb2.TENANT_STATE_DELETING
    assert again.tenant.delete_time == first.tenant.delete_time
    assert again.tenant.etag == first.tenant.etag  # a repeat changes nothing

    concurrent = await asyncio.gather(*(delete(idle_stack.stubs, tenant.id) for _ in range(6)))
    assert {r.operation.name for r in concurrent} == {first.operation.name}
    assert {r.tenant.state for r in concurrent} == {tenant_pb2.TENANT_STATE_DELETING}

    operations = await stack.stubs.operations.ListOperations(
        operation_service_pb2.ListOperationsRequest(tenant_id=tenant.id)
    )
    kinds = Counter(op.kind for op in operations.operations)
    assert kinds == {operation_pb2.OPERATION_KIND_PROVISION: 1, operation_pb2.OPERATION_KIND_DELETE: 1}

    # Nothing ran: the worker-less queue leaves the tenant soft-deleted with its schema.
    assert (await get_tenant(stack.stubs, tenant.id)).state == tenant_pb2.TENANT_STATE_DELETING
    assert await schema_exists(engine, tenant.schema_name)


async def test_delete_unknown_or_malformed_tenant(stack: Stack) -> None:
    missing = str(uuid.uuid4())
    error = await expect_error(delete(stack.stubs, missing), grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")
    assert missing in error_info(error).metadata.values()
    for bad in ("", "not-a-uuid", "'; DROP SCHEMA public CASCADE; --", uuid.uuid4().hex):
        error = await expect_error(delete(stack.stubs, bad), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
        assert "tenant_id" in field_violations(error)
    error = await expect_error(
        stack.stubs.tenants.DeleteTenant(
            tenant_service_pb2.DeleteTenantRequest(tenant_id=missing, request_id="nope"), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert "request_id" in field_violations(error)


async def test_delete_failed_tenant(failing_stack: Stack, engine: AsyncEngine) -> None:
    registered = await failing_stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
    provision = await wait_done(failing_stack.stubs, registered.operation.name)
    assert provision.state == operation_pb2.OPERATION_STATE_FAILED
    assert provision.error_message.startswith("PROVISIONING_FAILED: ")
    assert "injected" not in provision.error_message
    tenant = await get_tenant(failing_stack.stubs, registered.tenant.id, tenant_pb2.TENANT_STATE_FAILED)

    response = await delete(failing_stack.stubs, tenant.id)
    assert response.tenant.state == tenant_pb2.TENANT_STATE_DELETING
    operation = await wait_done(failing_stack.stubs, response.operation.name)
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    await get_tenant(failing_stack.stubs, tenant.id, tenant_pb2.TENANT_STATE_DELETED)
    await assert_purged(engine, tenant)
    # The failed provisioning stays FAILED: deletion does not rewrite history.
    after = await failing_stack.stubs.operations.GetOperation(
        operation_service_pb2.GetOperationRequest(name=registered.operation.name)
    )
    assert after.operation.state == operation_pb2.OPERATION_STATE_FAILED


async def test_delete_right_after_register(stack: Stack, engine: AsyncEngine, temporal_client: Client) -> None:
    """Deletion overtaking provisioning: the tenant ends DELETED with nothing left
    behind, and no late provisioning step resurrects it."""

    async def register_then_delete() -> tuple[tenant_pb2.Tenant, str, str]:
        registered = await stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
        deleted = await delete(stack.stubs, registered.tenant.id)
        assert deleted.tenant.state == tenant_pb2.TENANT_STATE_DELETING
        if deleted.tenant.purge_time != deleted.tenant.delete_time:
            # Provisioning won the race (ACTIVE: its data is retained): purge now.
            await purge(stack.stubs, registered.tenant.id)
        return registered.tenant, registered.operation.name, deleted.operation.name

    results = await asyncio.gather(*(register_then_delete() for _ in range(5)))

    for tenant, provision_name, delete_name in results:
        deletion = await wait_done(stack.stubs, delete_name)
        assert deletion.state == operation_pb2.OPERATION_STATE_SUCCEEDED, deletion
        provision = await wait_done(stack.stubs, provision_name, timeout=30)
        assert provision.state in (
            operation_pb2.OPERATION_STATE_CANCELLED,
            operation_pb2.OPERATION_STATE_SUCCEEDED,
        ), provision
        await get_tenant(stack.stubs, tenant.id, tenant_pb2.TENANT_STATE_DELETED)
        await assert_purged(engine, tenant)
        description = await temporal_client.get_workflow_handle(provision_workflow_id(uuid.UUID(tenant.id))).describe()
        # Cancelled mid-step, or finished as "abandoned" when it met DELETING:
        # never FAILED, which would page someone for a healthy deletion.
        assert description.status in (WorkflowExecutionStatus.CANCELED, WorkflowExecutionStatus.COMPLETED)

    await asyncio.sleep(2.0)
    for tenant, provision_name, _ in results:
        await get_tenant(stack.stubs, tenant.id, tenant_pb2.TENANT_STATE_DELETED)
        await assert_purged(engine, tenant)
        provision = (
            await stack.stubs.operations.GetOperation(operation_service_pb2.GetOperationRequest(name=provision_name))
        ).operation
        assert provision.done


async def test_list_tenants_hides_deleting_and_deleted(stack: Stack, idle_stack: Stack) -> None:
    active = await register_active(stack.stubs)
    deleting = await register_active(stack.stubs)
    await delete(idle_stack.stubs, deleting.id)
    deleted = await register_active(stack.stubs)
    await delete_and_purge(stack.stubs, deleted.id)

    async def all_tenants(show_deleted: bool) -> dict[str, int]:
        found: dict[str, int] = {}
        token = ""
        for _ in range(100):
            page = await stack.stubs.tenants.ListTenants(
                tenant_service_pb2.ListTenantsRequest(page_size=7, page_token=token, show_deleted=show_deleted)
            )
            for tenant in page.tenants:
                assert tenant.id not in found, "a tenant appeared on two pages"
                found[tenant.id] = tenant.state
            token = page.next_page_token
            if not token:
                return found
        raise AssertionError("pagination did not end")

    visible = await all_tenants(show_deleted=False)
    assert active.id in visible
    assert deleting.id not in visible and deleted.id not in visible
    assert not {tenant_pb2.TENANT_STATE_DELETING, tenant_pb2.TENANT_STATE_DELETED} & set(visible.values())

    everything = await all_tenants(show_deleted=True)
    assert everything[active.id] == tenant_pb2.TENANT_STATE_ACTIVE
    assert everything[deleting.id] == tenant_pb2.TENANT_STATE_DELETING
    assert everything[deleted.id] == tenant_pb2.TENANT_STATE_DELETED
    assert set(visible) <= set(everything)


# --- requests racing the deletion -----------------------------------------------------


@dataclass(frozen=True)
class Call:
    tenant_id: str
    method: str
    start: float
    end: float
    code: grpc.StatusCode
    reason: str
    detail: str


ALLOWED_TARGET_OUTCOMES = {
    (OK, ""),
    (grpc.StatusCode.FAILED_PRECONDITION, "TENANT_DELETING"),
    (grpc.StatusCode.NOT_FOUND, "TENANT_DELETED"),
}


async def test_requests_racing_deletion_see_only_ok_deleting_or_deleted(stack: Stack, engine: AsyncEngine) -> None:
    loop = asyncio.get_running_loop()
    projects = stack.stubs.projects
    target = await register_active(stack.stubs)
    others = [await register_active(stack.stubs) for _ in range(3)]

    project_ids: dict[str, list[str]] = {}
    created_names: dict[str, set[str]] = {}
    for tenant in (target, *others):
        metadata = ((TENANT_ID_HEADER, tenant.id),)
        names = {f"{tenant.slug}-seed-{i}" for i in range(4)}
        ids = []
        for name in sorted(names):
            created = await projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name=name), metadata=metadata, timeout=10
            )
            ids.append(created.project.id)
        project_ids[tenant.id], created_names[tenant.id] = ids, names

    calls: list[Call] = []
    stop = asyncio.Event()
    sequence = itertools.count()

    async def one_call(tenant: tenant_pb2.Tenant, method: str) -> None:
        metadata = ((TENANT_ID_HEADER, tenant.id),)
        start = loop.time()
        code, reason, detail = OK, "", ""
        name = ""
        try:
            if method == "ListProjects":
                await projects.ListProjects(
                    project_service_pb2.ListProjectsRequest(page_size=100), metadata=metadata, timeout=20
                )
            elif method == "GetProject":
                project_id = random.choice(project_ids[tenant.id])
                await projects.GetProject(
                    project_service_pb2.GetProjectRequest(project_id=project_id), metadata=metadata, timeout=20
                )
            else:
                name = f"{tenant.slug}-race-{next(sequence)}"
                await projects.CreateProject(
                    project_service_pb2.CreateProjectRequest(name=name), metadata=metadata, timeout=20
                )
        except grpc.aio.AioRpcError as error:
            code, detail = error.code(), error.details() or ""
            try:
                reason = error_info(error).reason
            except AssertionError as missing:
                reason = f"<no ErrorInfo: {missing}>"
        if method == "CreateProject" and code == OK:
            created_names[tenant.id].add(name)
        calls.append(Call(tenant.id, method, start, loop.time(), code, reason, detail))

    async def caller(tenant: tenant_pb2.Tenant, seed: int) -> None:
        methods = ["ListProjects", "GetProject", "CreateProject"]
        rng = random.Random(seed)
        while not stop.is_set():
            await one_call(tenant, rng.choice(methods))

    async with asyncio.timeout(120):
        tasks = [asyncio.create_task(caller(target, i)) for i in range(10)]
        tasks += [asyncio.create_task(caller(other, 100 + i)) for i, other in enumerate(others * 2)]
        try:
            await asyncio.sleep(0.7)  # callers are in full swing
            response = await delete(stack.stubs, target.id)
            delete_returned = loop.time()
            assert response.tenant.state == tenant_pb2.TENANT_STATE_DELETING
            await asyncio.sleep(0.5)  # soft-deleted: its data kept, its calls refused
            await purge(stack.stubs, target.id)

            async def is_deleted() -> bool:
                return (await get_tenant(stack.stubs, target.id)).state == tenant_pb2.TENANT_STATE_DELETED

            await eventually(is_deleted, timeout=60, interval=0.05)
            deleted_seen = loop.time()
            await asyncio.sleep(1.5)  # keep hammering the deleted tenant
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        crashed = [r for r in results if isinstance(r, BaseException)]
        assert not crashed, crashed

    target_calls = [c for c in calls if c.tenant_id == target.id]
    other_calls = [c for c in calls if c.tenant_id != target.id]
    outcomes = Counter((c.code, c.reason) for c in target_calls)

    bugs = [c for c in calls if c.code in BUG_CODES]
    assert not bugs, bugs[:5]
    unexpected = [c for c in target_calls if (c.code, c.reason) not in ALLOWED_TARGET_OUTCOMES]
    assert not unexpected, (unexpected[:5], outcomes)

    after_delete = [c for c in target_calls if c.start > delete_returned]
    assert after_delete, "no call started after DeleteTenant returned"
    assert not [c for c in after_delete if c.code == OK], outcomes
    after_deleted = [c for c in target_calls if c.start > deleted_seen]
    assert after_deleted
    assert {(c.code, c.reason) for c in after_deleted} == {(grpc.StatusCode.NOT_FOUND, "TENANT_DELETED")}
    assert any(c.code == OK for c in target_calls if c.end < delete_returned), "no call succeeded before the delete"

    # The other tenants never noticed.
    assert other_calls
    assert {c.code for c in other_calls} == {OK}, Counter((c.code, c.reason) for c in other_calls)
    for other in others:
        listed = await projects.ListProjects(
            project_service_pb2.ListProjectsRequest(page_size=500),
            metadata=((TENANT_ID_HEADER, other.id),),
            timeout=10,
        )
        assert len(listed.projects) < 500
        assert {p.name for p in listed.projects} == created_names[other.id]
        await get_tenant(stack.stubs, other.id, tenant_pb2.TENANT_STATE_ACTIVE)

    await assert_purged(engine, target)


# --- a deletion workflow started directly on Temporal -----------------------------------


async def test_forged_deletion_workflow_refuses_and_provisioning_carries_on(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    """Whoever can reach Temporal could start TenantDeletionWorkflow for any
    tenant. Without DeleteTenant's DELETE operation it must fail, typed and for
    good, before it cancels provisioning or drops anything; a real DeleteTenant
    afterwards still works."""
    release = asyncio.Event()
    provisioning_started = asyncio.Event()
    queue = f"test-forged-{uuid.uuid4().hex[:12]}"
    real = TenantActivities(engine, temporal_client)

    @activity.defn(name="provision_tenant")
    async def provision_tenant(input: ProvisionTenantInput) -> None:
        # Held until the forged deletions are over: the tenant stays CREATING
        # with its provisioning workflow RUNNING (the worker heartbeats for it).
        provisioning_started.set()
        await release.wait()
        await real.provision_tenant(input)

    activities = [
        provision_tenant if getattr(a, "__name__", "") == "provision_tenant" else a
        for a in activities_for(engine, temporal_client, queue)
    ]
    async with running_stack(engine=engine, client=temporal_client, task_queue=queue, activities=activities) as stack:
        registered = await stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
        tenant_id = registered.tenant.id
        await asyncio.wait_for(provisioning_started.wait(), 30)
        provisioning = temporal_client.get_workflow_handle(provision_workflow_id(uuid.UUID(tenant_id)))

        # Under the id earlier releases gave a tenant's deletion, and under any other id.
        for workflow_id in (f"tenant-delete-{tenant_id}", f"forged-{uuid.uuid4().hex}"):
            forged = await temporal_client.start_workflow(
                DELETE_WORKFLOW, DeleteTenantInput(tenant_id=tenant_id), id=workflow_id, task_queue=queue
            )
            with pytest.raises(WorkflowFailureError) as failed:
                await asyncio.wait_for(forged.result(), 60)
            cause = failed.value.cause
            assert isinstance(cause, ApplicationError), cause
            assert cause.type == DELETION_NOT_REQUESTED and cause.non_retryable, cause
            # It did nothing: no activity after the check was scheduled.
            scheduled = [
                event.activity_task_scheduled_event_attributes.activity_type.name
                async for event in forged.fetch_history_events()
                if event.HasField("activity_task_scheduled_event_attributes")
            ]
            assert scheduled == ["check_deletion_requested"]
            assert (await provisioning.describe()).status == WorkflowExecutionStatus.RUNNING
            await get_tenant(stack.stubs, tenant_id, tenant_pb2.TENANT_STATE_CREATING)
            operation = await stack.stubs.operations.GetOperation(
                operation_service_pb2.GetOperationRequest(name=registered.operation.name)
            )
            # Not cancelled: still PENDING (the held activity has not reached
            # the real one, which writes RUNNING first).
            assert operation.operation.state == operation_pb2.OPERATION_STATE_PENDING

        release.set()
        assert (await wait_done(stack.stubs, registered.operation.name)).state == (
            operation_pb2.OPERATION_STATE_SUCCEEDED
        )
        tenant = await get_tenant(stack.stubs, tenant_id, tenant_pb2.TENANT_STATE_ACTIVE)
        assert await schema_exists(engine, tenant.schema_name)

        # A real deletion still works.
        assert (await delete_and_purge(stack.stubs, tenant_id)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
        await get_tenant(stack.stubs, tenant_id, tenant_pb2.TENANT_STATE_DELETED)
        await assert_purged(engine, tenant)

        # Once done, the deletion cannot be run again by hand either. (The
        # operation is SUCCEEDED when the purge commits; its workflow closes
        # a moment later, and only then is the id free to start again.)
        deletion_id = (
            await stack.stubs.operations.ListOperations(
                operation_service_pb2.ListOperationsRequest(tenant_id=tenant_id)
            )
        ).operations
        [deletion_name] = [op.name for op in deletion_id if op.kind == operation_pb2.OPERATION_KIND_DELETE]
        workflow_id = deletion_name.removeprefix("operations/")
        await asyncio.wait_for(temporal_client.get_workflow_handle(workflow_id).result(), 60)
        again = await temporal_client.start_workflow(
            DELETE_WORKFLOW,
            DeleteTenantInput(tenant_id=tenant_id),
            id=workflow_id,
            task_queue=queue,
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(again.result(), 60)
        assert isinstance(failed.value.cause, ApplicationError)
        assert failed.value.cause.type == DELETION_NOT_REQUESTED


async def test_forged_deletion_with_a_malformed_tenant_id_fails_for_good(stack: Stack, temporal_client: Client) -> None:
    forged = await temporal_client.start_workflow(
        DELETE_WORKFLOW,
        DeleteTenantInput(tenant_id="not-a-uuid"),
        id=f"forged-{uuid.uuid4().hex}",
        task_queue=stack.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(forged.result(), 60)
    assert isinstance(failed.value.cause, ApplicationError)
    assert failed.value.cause.type == DELETION_NOT_REQUESTED
    assert "not a tenant id" in failed.value.cause.message

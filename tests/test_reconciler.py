"""The reconciler and its schedule against the real PostgreSQL and Temporal."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, ScheduleActionStartWorkflow, ScheduleOverlapPolicy
from temporalio.service import RPCError

from provisioner_worker.reconciler import ReconcileReport
from provisioner_worker.schedule import ensure_reconcile_schedule
from tenantry.db.tenants import REQUEST_RECORD_RETENTION
from tenantry.schema_names import SCHEMA_NAME_FROM_ID_SQL, SCHEMA_NAME_REGEX, is_tenant_schema_name, schema_name_for
from tenantry.v1 import operation_pb2, tenant_pb2, tenant_service_pb2
from tenantry.workflow_contract import RECONCILE_WORKFLOW, ReconcileInput
from tests.stack import Stack, register_active, registration, running_stack, stack_without_temporal, wait_done

_TIMEOUT = timedelta(seconds=90)
# Leaves other tests' PENDING operations alone: only the RUNNING and orphan checks act.
_NO_PENDING = ReconcileInput(pending_threshold_seconds=3600)


async def reconcile(client: Client, stack: Stack, input: ReconcileInput) -> ReconcileReport:
    """One ReconcileWorkflow run served by the stack's worker, whose starter uses the same queue."""
    report: ReconcileReport = await client.execute_workflow(
        RECONCILE_WORKFLOW,
        input,
        id=f"test-reconcile-{uuid.uuid4().hex}",
        task_queue=stack.task_queue,
        result_type=ReconcileReport,
        execution_timeout=_TIMEOUT,
    )
    return report


async def _states(engine: AsyncEngine, workflow_id: str) -> tuple[str, str, str]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT t.state, w.state, w.error_message FROM workflow_executions w "
                    "JOIN tenants t ON t.id = w.tenant_id WHERE w.workflow_id = :w"
                ),
                {"w": workflow_id},
            )
        ).one()
    return row[0], row[1], row[2]


async def _age_as_running(engine: AsyncEngine, workflow_id: str) -> None:
    async with engine.begin() as conn:
        updated = await conn.execute(
            text(
                "UPDATE workflow_executions SET state = 'RUNNING', start_time = now() - interval '1 minute', "
                "update_time = now() - interval '1 minute' WHERE workflow_id = :w AND state = 'PENDING'"
            ),
            {"w": workflow_id},
        )
        assert updated.rowcount == 1


# --- the schedule -------------------------------------------------------------------------------


async def test_ensure_reconcile_schedule_is_idempotent_and_converges(temporal_client: Client) -> None:
    schedule_id = f"test-reconciler-{uuid.uuid4().hex[:12]}"
    # No worker polls this queue; long intervals so nothing fires during the test.
    queue = f"test-schedule-{uuid.uuid4().hex[:12]}"
    handle = temporal_client.get_schedule_handle(schedule_id)
    try:
        await ensure_reconcile_schedule(temporal_client, queue, 3600, schedule_id=schedule_id)
        await ensure_reconcile_schedule(temporal_client, queue, 3600, schedule_id=schedule_id)
        description = await handle.describe()
        assert [i.every for i in description.schedule.spec.intervals] == [timedelta(seconds=3600)]
        action = description.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == RECONCILE_WORKFLOW
        assert action.task_queue == queue
        assert description.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP

        # A restarted worker with another interval updates the one schedule.
        await ensure_reconcile_schedule(temporal_client, queue, 7200, schedule_id=schedule_id)
        description = await handle.describe()
        assert [i.every for i in description.schedule.spec.intervals] == [timedelta(seconds=7200)]

        # Several workers starting at once converge without errors.
        await asyncio.gather(
            *(ensure_reconcile_schedule(temporal_client, queue, 5400, schedule_id=schedule_id) for _ in range(4))
        )
        description = await handle.describe()
        assert [i.every for i in description.schedule.spec.intervals] == [timedelta(seconds=5400)]
        matching = [s.id async for s in await temporal_client.list_schedules() if s.id == schedule_id]
        assert matching in ([schedule_id], []), matching  # list is eventually consistent
    finally:
        with contextlib.suppress(RPCError):
            await handle.delete()
        with contextlib.suppress(RPCError):
            await temporal_client.get_workflow_handle(f"{schedule_id}-run").terminate("test cleanup")


# --- orphan schemas -----------------------------------------------------------------------------


async def test_schema_without_live_tenant_is_reported_as_orphan(
    stack: Stack, engine: AsyncEngine, temporal_client: Client
) -> None:
    live = await stack.stubs.tenants.RegisterTenant(registration())
    assert (await wait_done(stack.stubs, live.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED

    orphan = "t_" + uuid.uuid4().hex
    not_tenant_like = f"t_{uuid.uuid4().hex[:8]}_scratch"
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{orphan}"'))
        await conn.execute(text(f'CREATE SCHEMA "{not_tenant_like}"'))
    try:
        report = await reconcile(temporal_client, stack, _NO_PENDING)
        assert report.orphan_schema_count >= 1
        assert report.orphan_schema_count == len(report.orphan_schemas)
        assert orphan in report.orphan_schemas
        assert live.tenant.schema_name not in report.orphan_schemas
        assert not_tenant_like not in report.orphan_schemas
        # Reporting only: the reconciler never drops a schema it did not create.
        async with engine.connect() as conn:
            count = (
                await conn.execute(
                    text("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = :s"), {"s": orphan}
                )
            ).scalar_one()
        assert count == 1
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{orphan}"'))
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{not_tenant_like}"'))


# Names PostgreSQL can hold (no NUL), tenant-like and not.
_SCHEMA_NAME_CANDIDATES = [
    "t_" + uuid.uuid4().hex,
    "t_" + "0" * 32,
    "public",
    "t_",
    "t_" + "0" * 31,
    "t_" + "0" * 33,
    "t_" + "A" * 32,
    "T_" + "0" * 32,
    "t_" + "g" * 32,
    "t_" + "0" * 32 + "\n",
    "x" + "t_" + "0" * 32,
    "t_" + "\uff10" * 32,
]


async def test_database_and_python_agree_on_schema_names(engine: AsyncEngine) -> None:
    """The pattern is written once (tenantry.schema_names): PostgreSQL derives
    the same name from an id and recognises the same names as Python, and the
    migrated CHECK constraint is the model's expression."""
    tenant_id = uuid.uuid4()
    async with engine.connect() as conn:
        derived = await conn.scalar(
            text(f"SELECT {SCHEMA_NAME_FROM_ID_SQL} FROM (SELECT CAST(:id AS uuid) AS id) AS s"), {"id": tenant_id}
        )
        assert derived == schema_name_for(tenant_id)
        for name in _SCHEMA_NAME_CANDIDATES:
            matches = await conn.scalar(
                text("SELECT CAST(:name AS text) ~ :regex"), {"name": name, "regex": SCHEMA_NAME_REGEX}
            )
            assert matches == is_tenant_schema_name(name), name
        migrated = await conn.scalar(
            text(
                "SELECT pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c "
                "WHERE c.conname = 'ck_tenants_schema_name_from_id'"
            )
        )
        await conn.execute(
            text(
                "CREATE TEMPORARY TABLE schema_name_probe (id uuid, schema_name varchar(63), "
                f"CONSTRAINT schema_name_probe_ck CHECK (schema_name = {SCHEMA_NAME_FROM_ID_SQL}))"
            )
        )
        modelled = await conn.scalar(
            text(
                "SELECT pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c "
                "WHERE c.conname = 'schema_name_probe_ck'"
            )
        )
        await conn.rollback()
    assert migrated is not None
    assert migrated == modelled


async def test_the_schedule_itself_finishes_work_left_pending(engine: AsyncEngine, temporal_client: Client) -> None:
    """Not a test calling reconcile() by hand: the Temporal Schedule fires on its
    own (every second here) and its run starts the workflow Temporal missed."""
    async with stack_without_temporal(engine) as dead:
        response = await dead.stubs.tenants.RegisterTenant(registration(), timeout=30)
    assert response.operation.state == operation_pb2.OPERATION_STATE_PENDING
    async with engine.begin() as conn:
        # Older than the scheduled run's pending threshold.
        await conn.execute(
            text("UPDATE workflow_executions SET update_time = now() - interval '1 minute' WHERE workflow_id = :w"),
            {"w": response.operation.name.removeprefix("operations/")},
        )
    async with running_stack(engine=engine, client=temporal_client) as live:
        schedule_id = f"test-schedule-fires-{uuid.uuid4().hex[:8]}"
        await ensure_reconcile_schedule(temporal_client, live.task_queue, 1.0, schedule_id)
        handle = temporal_client.get_schedule_handle(schedule_id)
        try:
            operation = await wait_done(live.stubs, response.operation.name, timeout=60)
            assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
            assert (await handle.describe()).info.num_actions >= 1
        finally:
            await handle.delete()


# --- lost RUNNING operations --------------------------------------------------------------------


async def test_running_operation_without_workflow_is_restarted_to_completion(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    async with stack_without_temporal(engine) as dead:
        response = await dead.stubs.tenants.RegisterTenant(registration(), timeout=30)
    workflow_id = response.operation.name.removeprefix("operations/")
    # The database says RUNNING for a minute, but Temporal never heard of it.
    await _age_as_running(engine, workflow_id)
    assert await _states(engine, workflow_id) == ("CREATING", "RUNNING", "")

    async with running_stack(engine=engine, client=temporal_client) as live:
        report = await reconcile(temporal_client, live, _NO_PENDING)
        assert workflow_id in report.restarted
        assert workflow_id not in report.cancelled
        operation = await wait_done(live.stubs, response.operation.name)
        tenant = (
            await live.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id))
        ).tenant
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    assert tenant.state == tenant_pb2.TENANT_STATE_ACTIVE


async def test_pending_deletion_is_driven_and_unwanted_lost_operation_is_cancelled(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    async with stack_without_temporal(engine) as dead:
        registered = await dead.stubs.tenants.RegisterTenant(registration(), timeout=30)
        deleted = await dead.stubs.tenants.DeleteTenant(
            tenant_service_pb2.DeleteTenantRequest(tenant_id=registered.tenant.id), timeout=30
        )
    provision_id = registered.operation.name.removeprefix("operations/")
    delete_id = deleted.operation.name.removeprefix("operations/")
    assert deleted.operation.state == operation_pb2.OPERATION_STATE_PENDING
    # The deletion superseded the provisioning in its own transaction.
    assert await _states(engine, provision_id) == ("DELETING", "CANCELLED", "the tenant was deleted")

    async with running_stack(engine=engine, client=temporal_client) as live:
        # The stale PENDING deletion gets its workflow started; it purges at once.
        report = await reconcile(temporal_client, live, ReconcileInput(pending_threshold_seconds=0))
        assert delete_id in report.started
        assert provision_id not in report.started
        operation = await wait_done(live.stubs, deleted.operation.name)
        assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
        assert await _states(engine, delete_id) == ("DELETED", "SUCCEEDED", "")
        async with engine.connect() as conn:
            schemas = (
                await conn.execute(
                    text("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = :s"),
                    {"s": registered.tenant.schema_name},
                )
            ).scalar_one()
        assert schemas == 0

        # The safety net: a RUNNING operation whose workflow closed and that
        # nobody wants any more (an ACTIVE tenant's provisioning) is cancelled.
        active = await register_active(live.stubs)
        lost = f"tenant-provision-{active.id}"
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE workflow_executions SET state = 'RUNNING', end_time = NULL, "
                    "update_time = now() - interval '1 minute' WHERE workflow_id = :w"
                ),
                {"w": lost},
            )
        report = await reconcile(temporal_client, live, _NO_PENDING)
        assert lost in report.cancelled and lost not in report.restarted
        assert await _states(engine, lost) == ("ACTIVE", "CANCELLED", "workflow closed as COMPLETED")


async def test_old_request_records_are_forgotten(stack: Stack, engine: AsyncEngine, temporal_client: Client) -> None:
    """A synchronous change's request_id is remembered for the retention; the
    reconciler (running as the worker's role) forgets older records."""
    tenant = await register_active(stack.stubs)
    fresh, old = uuid.uuid4(), uuid.uuid4()
    for request_id in (fresh, old):
        await stack.stubs.tenants.SuspendTenant(
            tenant_service_pb2.SuspendTenantRequest(tenant_id=tenant.id, reason="r", request_id=str(request_id))
        )
        await stack.stubs.tenants.ResumeTenant(tenant_service_pb2.ResumeTenantRequest(tenant_id=tenant.id))
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE request_records SET create_time = now() - CAST(:age AS interval) WHERE request_id = :r"),
            {"age": REQUEST_RECORD_RETENTION + timedelta(minutes=1), "r": old},
        )
    report = await reconcile(temporal_client, stack, _NO_PENDING)
    assert report.forgotten_request_records >= 1
    async with engine.connect() as conn:
        left = set(
            (
                await conn.execute(
                    text("SELECT request_id FROM request_records WHERE request_id = ANY(:ids)"), {"ids": [fresh, old]}
                )
            ).scalars()
        )
    assert left == {fresh}

"""Fault injection with real OS processes: a worker SIGKILLed mid-activity and a
Temporal server that goes away while the API is registering tenants."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from provisioner_worker.reconciler import ReconcileReport
from provisioner_worker.worker import build_worker
from tenantry.db.engine import create_engine
from tenantry.migrations import tenant_head_revision, upgrade_control_plane
from tenantry.v1 import operation_pb2, operation_service_pb2, tenant_pb2, tenant_service_pb2
from tenantry.workflow_contract import RECONCILE_WORKFLOW, ReconcileInput, reconcile_schedule_id
from tenantry_dev.embedded import free_port, temporal_dev_server_command
from tests.stack import (
    ServiceProcess,
    Stack,
    pending_schema_step,
    registration,
    running_stack,
    schema_step,
    service_env,
    spawn,
    spawn_command,
    stopping,
    wait_done,
)

pytestmark = pytest.mark.slow

TENANTS = 10
# The worker subprocesses must never run a scheduled reconciliation during the
# test (it would act on other tests' rows): the interval is a week.
NO_SCHEDULED_RECONCILE = str(7 * 24 * 3600)


# --- process helpers ---------------------------------------------------------------------------


def _worker_env(
    database_url: str, temporal_address: str, namespace: str, task_queue: str, liveness_file: Path
) -> dict[str, str]:
    # Two workers may run at once (and other test sessions on this host): no
    # fixed metrics ports (service_env turns them off), no shared liveness file.
    return service_env(
        database_url,
        temporal_address,
        task_queue,
        TENANTRY_TEMPORAL_NAMESPACE=namespace,
        TENANTRY_RECONCILE_INTERVAL_SECONDS=NO_SCHEDULED_RECONCILE,
        TENANTRY_WORKER_LIVENESS_FILE=str(liveness_file),
    )


@asynccontextmanager
async def _dev_server(name: str, port: int, db_file: Path, log_dir: Path) -> AsyncIterator[ServiceProcess]:
    """A Temporal dev server process, persistent in `db_file`; killed on exit if still running."""
    server = spawn_command(name, temporal_dev_server_command("127.0.0.1", port, db_file), dict(os.environ), log_dir)
    with stopping(server):
        yield server


async def _delete_schedule_if_ours(client: Client, task_queue: str) -> None:
    """The worker process creates a reconcile schedule for its queue; leave none
    behind that targets a queue nobody polls any more."""
    try:
        await client.get_schedule_handle(reconcile_schedule_id(task_queue)).delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


# --- database helpers --------------------------------------------------------------------------


async def _blocked_by(engine: AsyncEngine, holder_pid: int) -> int:
    """How many backends wait for a lock held by `holder_pid` (a new transaction
    each time: pg_stat_activity is a per-transaction snapshot)."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"), {"pid": holder_pid}
        )
    return int(count or 0)


async def _assert_provisioned(engine: AsyncEngine, tenant_ids: list[str]) -> None:
    """ACTIVE, one admin membership, one schema at the tenant head revision, one
    provisioning operation, SUCCEEDED."""
    head = tenant_head_revision()
    async with engine.connect() as conn:
        for tenant_id in tenant_ids:
            tenant = (
                await conn.execute(
                    text("SELECT state, schema_name, admin_user_id FROM tenants WHERE id = :id"), {"id": tenant_id}
                )
            ).one()
            assert tenant.state == "ACTIVE", tenant_id
            memberships = (
                await conn.execute(
                    text("SELECT user_id, role FROM tenant_memberships WHERE tenant_id = :id"), {"id": tenant_id}
                )
            ).all()
            assert [(m.user_id, m.role) for m in memberships] == [(tenant.admin_user_id, "admin")], tenant_id
            schemas = await conn.scalar(
                text("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = :s"), {"s": tenant.schema_name}
            )
            assert schemas == 1, tenant_id
            versions = (
                await conn.execute(text(f'SELECT version_num FROM "{tenant.schema_name}".alembic_version'))
            ).scalars()
            assert list(versions) == [head], tenant_id
            operations = (
                await conn.execute(
                    text("SELECT kind, state, error_message FROM workflow_executions WHERE tenant_id = :id"),
                    {"id": tenant_id},
                )
            ).all()
            assert [(o.kind, o.state, o.error_message) for o in operations] == [("PROVISION", "SUCCEEDED", "")], (
                tenant_id
            )


@asynccontextmanager
async def _isolated_database(database_url: str) -> AsyncIterator[str]:
    """A fresh database on the same server, migrated: the reconciler run by the
    Temporal-outage test then only sees this test's rows."""
    url = make_url(database_url)
    name = f"faults_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        isolated = url.set(database=name).render_as_string(hide_password=False)
        try:
            await asyncio.to_thread(upgrade_control_plane, isolated)
            yield isolated
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


# --- Temporal dev server -----------------------------------------------------------------------


async def _reconcile_now(client: Client, task_queue: str) -> ReconcileReport:
    """One reconciler run that takes every PENDING operation, however recent."""
    report: ReconcileReport = await client.execute_workflow(
        RECONCILE_WORKFLOW,
        ReconcileInput(pending_threshold_seconds=0),
        id=f"faults-reconcile-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
        result_type=ReconcileReport,
        execution_timeout=timedelta(seconds=60),
    )
    return report


async def _connect_when_up(address: str, timeout: float = 60.0) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Client.connect(address, connect_timeout=None)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


# --- tests -------------------------------------------------------------------------------------


async def test_worker_killed_mid_activity_new_worker_finishes_all(
    engine: AsyncEngine, database_url: str, temporal_client: Client, tmp_path: Path
) -> None:
    """Ten provisioning workflows are inside their schema step when their worker
    is SIGKILLed; a new worker process finishes every one exactly once."""
    queue = f"faults-kill-{uuid.uuid4().hex[:12]}"
    target = temporal_client.service_client.config.target_host
    env = _worker_env(database_url, target, temporal_client.namespace, queue, tmp_path / "worker.alive")
    try:
        async with running_stack(engine=engine, client=temporal_client, task_queue=queue, with_worker=False) as stack:
            responses = await asyncio.gather(
                *(stack.stubs.tenants.RegisterTenant(registration(), timeout=30) for _ in range(TENANTS))
            )
            tenant_ids = [r.tenant.id for r in responses]
            workflow_ids = [r.operation.name.removeprefix("operations/") for r in responses]
            # Workflows started, nobody polls the queue yet: recorded, PENDING.
            assert {r.operation.state for r in responses} == {operation_pb2.OPERATION_STATE_PENDING}

            # Hold the tenant rows: the schema step's first statement (a shared
            # row lock) then blocks inside the activity, deterministically.
            async with engine.connect() as holder:
                await holder.begin()
                holder_pid = int(await holder.scalar(text("SELECT pg_backend_pid()")) or 0)
                locked = (
                    await holder.execute(
                        text("SELECT id FROM tenants WHERE id = ANY(CAST(:ids AS uuid[])) FOR UPDATE"),
                        {"ids": tenant_ids},
                    )
                ).all()
                assert len(locked) == TENANTS

                worker_a = spawn("worker-a", "provisioner_worker", env, tmp_path)
                with stopping(worker_a):
                    deadline = time.monotonic() + 60
                    while await _blocked_by(engine, holder_pid) < TENANTS:
                        worker_a.check_alive()
                        assert time.monotonic() < deadline, f"activities never started:\n{worker_a.log_tail()}"
                        await asyncio.sleep(0.2)
                    # Temporal too sees every schema step held by worker A, first attempt.
                    pending = await asyncio.gather(*(pending_schema_step(temporal_client, w) for w in workflow_ids))
                    assert pending == [(1, worker_a.identity)] * TENANTS, pending
                    assert worker_a.stop(signal.SIGKILL) == -signal.SIGKILL
                await holder.rollback()

            # Nothing finished while the rows were held.
            async with engine.connect() as conn:
                states = (
                    await conn.execute(
                        text("SELECT state, count(*) FROM tenants WHERE id = ANY(CAST(:ids AS uuid[])) GROUP BY 1"),
                        {"ids": tenant_ids},
                    )
                ).all()
            assert [tuple(s) for s in states] == [("CREATING", TENANTS)]

            worker_b = spawn("worker-b", "provisioner_worker", env, tmp_path)
            with stopping(worker_b):
                operations = await asyncio.gather(
                    *(wait_done(stack.stubs, r.operation.name, timeout=120) for r in responses)
                )
                assert {o.state for o in operations} == {operation_pb2.OPERATION_STATE_SUCCEEDED}, worker_b.log_tail()
                results = await asyncio.wait_for(
                    asyncio.gather(*(temporal_client.get_workflow_handle(w).result() for w in workflow_ids)), 60
                )
                assert results == ["active"] * TENANTS
                worker_b.check_alive()

            await _assert_provisioned(engine, tenant_ids)
            for workflow_id in workflow_ids:
                # The killed worker's attempt never completed: the schema step
                # completed once, as a retry started and finished by worker B.
                step = await schema_step(temporal_client, workflow_id)
                assert step.attempt >= 2, (workflow_id, step)
                assert step.started_by == step.completed_by == worker_b.identity, (workflow_id, step)
            for tenant_id in tenant_ids:
                request = tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id)
                tenant = (await stack.stubs.tenants.GetTenant(request)).tenant
                assert tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
    finally:
        await _delete_schedule_if_ours(temporal_client, queue)


async def test_temporal_down_register_succeeds_reconciler_finishes(database_url: str, tmp_path: Path) -> None:
    """RegisterTenant while the Temporal server is stopped answers OK (CREATING,
    PENDING) within a bound; after the server is back the reconciler starts the
    workflow and the tenant becomes ACTIVE."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    db_file = tmp_path / "temporal.db"
    queue = f"faults-outage-{uuid.uuid4().hex[:12]}"
    async with _isolated_database(database_url) as isolated_url:
        isolated_engine = create_engine(isolated_url)
        try:
            async with _dev_server("temporal-1", port, db_file, tmp_path) as server:
                await _connect_when_up(address)
                api_client = await Client.connect(address, lazy=True)
                # The API's client holds a live connection when the outage begins.
                await api_client.workflow_service.get_system_info(GetSystemInfoRequest())
                async with running_stack(
                    engine=isolated_engine,
                    client=api_client,
                    task_queue=queue,
                    with_worker=False,
                ) as stack:
                    await asyncio.to_thread(server.stop, signal.SIGTERM)
                    await _register_during_outage_and_recover(stack, isolated_engine, address, db_file, tmp_path)
        finally:
            await isolated_engine.dispose()


async def _register_during_outage_and_recover(
    stack: Stack, engine: AsyncEngine, address: str, db_file: Path, tmp_path: Path
) -> None:
    port = int(address.rsplit(":", 1)[1])
    started = time.monotonic()
    response = await stack.stubs.tenants.RegisterTenant(registration(), timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"RegisterTenant took {elapsed:.1f}s with Temporal down"
    assert response.tenant.state == tenant_pb2.TENANT_STATE_CREATING
    assert response.operation.state == operation_pb2.OPERATION_STATE_PENDING
    assert not response.operation.done
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT t.state AS tenant_state, w.state AS op_state FROM tenants t "
                    "JOIN workflow_executions w ON w.tenant_id = t.id WHERE t.id = :id"
                ),
                {"id": response.tenant.id},
            )
        ).one()
    assert (row.tenant_state, row.op_state) == ("CREATING", "PENDING")
    # Reads need only the database.
    fetched = await stack.stubs.operations.GetOperation(
        operation_service_pb2.GetOperationRequest(name=response.operation.name), timeout=10
    )
    assert fetched.operation.state == operation_pb2.OPERATION_STATE_PENDING
    workflow_id = response.operation.name.removeprefix("operations/")

    async with _dev_server("temporal-2", port, db_file, tmp_path):
        client = await _connect_when_up(address)
        async with build_worker(client, engine, stack.task_queue):
            report = await _reconcile_now(client, stack.task_queue)
            assert workflow_id in report.started
            # Its own database: nothing else to start, cancel, fail or report.
            assert report.started == [workflow_id]
            assert (report.restarted, report.cancelled, report.orphan_schemas) == ([], [], [])
            operation = await wait_done(stack.stubs, response.operation.name, timeout=60)
            assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
            await _assert_provisioned(engine, [response.tenant.id])

            # The API's own client reconnects after the restart (observed: the
            # start succeeds, RUNNING); if it did not, the reconciler would.
            second = await stack.stubs.tenants.RegisterTenant(registration(), timeout=60)
            if second.operation.state == operation_pb2.OPERATION_STATE_PENDING:
                await _reconcile_now(client, stack.task_queue)
            operation = await wait_done(stack.stubs, second.operation.name, timeout=60)
            assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED

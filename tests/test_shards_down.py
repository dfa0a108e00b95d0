"""One shard down while the others serve: its own embedded server (started
here, seeded, then stopped; the shared servers are never stopped). Its
tenants get UNAVAILABLE SHARD_UNAVAILABLE (never INTERNAL/UNKNOWN) at once,
the other shards' tenants keep being served, and health reports the shard
(`tenantry.shard.<name>`, `tenantry_shard_up`) while the API stays SERVING."""

from __future__ import annotations

import asyncio
import functools
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api.server import shard_health_name
from tenantry.db.engine import CONNECT_TIMEOUT_SECONDS, create_engine
from tenantry.migrations import tenant_head_revision
from tenantry.v1 import project_service_pb2, tenant_pb2, tenant_service_pb2
from tenantry_dev.embedded import DatabaseUrls, prepare_shard, start_embedded_postgres
from tests.stack import (
    Metadata,
    Stack,
    by_id,
    change_tenant_by_hand,
    error_info,
    eventually,
    fleet_at,
    retire_fleet,
    rpc_error,
    running_stack,
    shards_with_default,
)


@dataclass
class DoomedShard:
    urls: DatabaseUrls
    server: Any

    def stop(self) -> None:
        self.server.cleanup()  # pg_ctl stop; a second call does nothing


@pytest.fixture(scope="module")
def doomed() -> Iterator[DoomedShard]:
    """A third embedded server of this module's own, prepared as a shard."""
    root = Path(tempfile.mkdtemp(prefix="tenantry-test-doomed-"))
    url, server = start_embedded_postgres(root / "data")
    shard = DoomedShard(prepare_shard(url, secrets.token_hex(16)), server)
    try:
        yield shard
    finally:
        shard.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Fleet:
    api: Stack
    down: uuid.UUID  # on shard `c`, the doomed server
    on_b: uuid.UUID
    on_default: uuid.UUID


@pytest.fixture(scope="module")
async def fleet(
    doomed: DoomedShard,
    api_engine: AsyncEngine,
    worker_engine: AsyncEngine,
    database_urls: DatabaseUrls,
    shard_b_urls: DatabaseUrls,
    temporal_client: Client,
) -> AsyncIterator[Fleet]:
    revision = tenant_head_revision()
    c_worker = create_engine(doomed.urls.worker)
    b_worker = create_engine(shard_b_urls.worker)
    shards = shards_with_default(api_engine, database_urls.api, b=shard_b_urls.api, c=doomed.urls.api)
    [down] = await fleet_at(worker_engine, 1, revision, shard="c", shard_engine=c_worker)
    [on_b] = await fleet_at(worker_engine, 1, revision, shard="b", shard_engine=b_worker)
    [on_default] = await fleet_at(worker_engine, 1, revision)
    await c_worker.dispose()
    try:
        async with running_stack(engine=api_engine, client=temporal_client, with_worker=False, shards=shards) as api:
            yield Fleet(api, down, on_b, on_default)
    finally:
        await shards.dispose()
        async with worker_engine.begin() as conn:  # c's schema went with its server
            await conn.execute(text("UPDATE tenants SET state = 'DELETED' WHERE id = :id"), {"id": down})
        await retire_fleet(worker_engine, [on_b], shard_engine=b_worker)
        await retire_fleet(worker_engine, [on_default])
        await b_worker.dispose()


async def list_projects(api: Stack, metadata: Metadata) -> list[str]:
    response = await api.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=metadata, timeout=CONNECT_TIMEOUT_SECONDS + 10
    )
    return [p.name for p in response.projects]


async def health(api: Stack, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(api.channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


def shard_up(shard: str) -> float | None:
    return REGISTRY.get_sample_value("tenantry_shard_up", {"shard": shard})


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_shard_that_is_down_refuses_only_its_own_tenants(fleet: Fleet, doomed: DoomedShard) -> None:
    api = fleet.api
    everyone = (fleet.down, fleet.on_b, fleet.on_default)
    # All three served, and every shard reported up (its pool on c now holds connections).
    for tenant_id in everyone:
        await api.stubs.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name="before"), metadata=by_id(str(tenant_id)), timeout=10
        )
    for shard in ("default", "b", "c"):
        name = shard_health_name(shard)
        assert await eventually(functools.partial(_health_is, api, name, SERVING), timeout=10)
        assert shard_up(shard) == 1

    doomed.stop()

    for _ in range(3):
        for call in (
            lambda: list_projects(api, by_id(str(fleet.down))),
            lambda: api.stubs.projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name=f"x-{uuid.uuid4().hex[:6]}"),
                metadata=by_id(str(fleet.down)),
                timeout=CONNECT_TIMEOUT_SECONDS + 10,
            ),
        ):
            started = time.monotonic()
            error = await rpc_error(call())
            elapsed = time.monotonic() - started
            assert error.code() == grpc.StatusCode.UNAVAILABLE, f"{error.code()}: {error.details()}"
            info = error_info(error)
            assert (info.reason, info.metadata["shard"], info.metadata["tenant_id"]) == (
                "SHARD_UNAVAILABLE",
                "c",
                str(fleet.down),
            )
            # Bounded by the connect timeout, never by the call's deadline.
            assert elapsed < CONNECT_TIMEOUT_SECONDS + 2, elapsed
        # The others are served all along.
        assert await list_projects(api, by_id(str(fleet.on_b))) == ["before"]
        assert await list_projects(api, by_id(str(fleet.on_default))) == ["before"]

    # A change that stops its tenant serving cannot fence c first (tenantry.db.admission):
    # refused, nothing changed, so c cannot admit a suspended tenant once it is back.
    error = await rpc_error(
        api.stubs.tenants.SuspendTenant(
            tenant_service_pb2.SuspendTenantRequest(tenant_id=str(fleet.down), reason="c is down"),
            timeout=CONNECT_TIMEOUT_SECONDS + 10,
        )
    )
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.UNAVAILABLE, "SHARD_UNAVAILABLE")
    got = await api.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=str(fleet.down)), timeout=10)
    assert got.tenant.state == tenant_pb2.TENANT_STATE_ACTIVE

    # Health: the API is SERVING (its control plane is up), shard c is not.
    assert await eventually(functools.partial(_health_is, api, shard_health_name("c"), NOT_SERVING), timeout=10)
    assert shard_up("c") == 0
    assert await health(api, "") == SERVING
    assert await health(api, "tenantry.v1.ProjectService") == SERVING
    assert await health(api, shard_health_name("b")) == SERVING
    assert await health(api, shard_health_name("default")) == SERVING
    assert shard_up("b") == 1


async def _health_is(api: Stack, service: str, status: int) -> bool:
    try:
        return await health(api, service) == status
    except grpc.aio.AioRpcError as error:
        # Not reported yet (its first probe is under way).
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return False


async def test_a_tenant_on_a_shard_this_api_does_not_list_is_unavailable(
    fleet: Fleet, engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    """A row placed on a shard missing from this API's TENANTRY_SHARDS (a
    replica configured differently): not the caller's fault, UNAVAILABLE."""
    await change_tenant_by_hand(engine, fleet.on_b, "shard = 'elsewhere'", fencing=b_admin)
    try:
        error = await rpc_error(list_projects(fleet.api, by_id(str(fleet.on_b))))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert (error_info(error).reason, error_info(error).metadata["shard"]) == ("SHARD_UNAVAILABLE", "elsewhere")
    finally:
        await change_tenant_by_hand(engine, fleet.on_b, "shard = 'b'")
    await fleet.api.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="back-on-b"), metadata=by_id(str(fleet.on_b)), timeout=10
    )
    assert "back-on-b" in await list_projects(fleet.api, by_id(str(fleet.on_b)))


async def test_a_shard_that_never_answers_is_unavailable_within_the_connect_timeout(
    api_engine: AsyncEngine,
    worker_engine: AsyncEngine,
    engine: AsyncEngine,
    database_urls: DatabaseUrls,
    temporal_client: Client,
) -> None:
    """A hung server (it accepts TCP connections and never says a word): its
    tenant's calls end UNAVAILABLE SHARD_UNAVAILABLE after the connect
    timeout, not at the call's deadline; health reports the shard within its
    probe timeout; a refused tenant placed there is answered at once."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    shards = shards_with_default(
        api_engine, database_urls.api, hung=f"postgresql+asyncpg://tenantry_api:pw@127.0.0.1:{port}/tenantry"
    )
    [active, suspended] = await fleet_at(worker_engine, 2, tenant_head_revision())
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE tenants SET shard = 'hung' WHERE id = ANY(:ids)"), {"ids": [active, suspended]})
        await conn.execute(text("UPDATE tenants SET state = 'SUSPENDED' WHERE id = :id"), {"id": suspended})
    try:
        async with running_stack(engine=api_engine, client=temporal_client, with_worker=False, shards=shards) as api:
            started = time.monotonic()
            error = await rpc_error(list_projects(api, by_id(str(active))))
            elapsed = time.monotonic() - started
            assert error.code() == grpc.StatusCode.UNAVAILABLE, f"{error.code()}: {error.details()}"
            assert (error_info(error).reason, error_info(error).metadata["shard"]) == ("SHARD_UNAVAILABLE", "hung")
            assert CONNECT_TIMEOUT_SECONDS - 1 < elapsed < CONNECT_TIMEOUT_SECONDS + 3, elapsed

            started = time.monotonic()
            error = await rpc_error(list_projects(api, by_id(str(suspended))))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(error).reason == "TENANT_SUSPENDED"
            assert time.monotonic() - started < 1

            name = shard_health_name("hung")
            assert await eventually(functools.partial(_health_is, api, name, NOT_SERVING), timeout=10)
            assert await health(api, "") == SERVING
    finally:
        server.close()
        await shards.dispose()
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE tenants SET shard = 'default' WHERE id = ANY(:ids)"), {"ids": [active, suspended]}
            )
        await retire_fleet(worker_engine, [active, suspended])

"""The connection budget per shard: tenant-api checks its pool on every shard
database at start (pools are per shard and per process), refusing in one
line that names the shard; a shard that cannot be reached at start is not a
budget problem (the API starts, and health reports the shard). Against a real
embedded PostgreSQL started with max_connections = 20 as shard `b`."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tenant_api.server import shard_health_name
from tenantry.db.connection_budget import (
    API_LISTEN_CONNECTIONS,
    ConnectionBudget,
    ConnectionNeed,
    read_budget,
    refusal,
    server_of,
)
from tenantry.db.shards import Shards
from tenantry_dev.embedded import DatabaseUrls, free_port, start_embedded_postgres
from tests.stack import ServiceProcess, api_channel, eventually, service_env, spawn_api, stopping, wait_serving

MAX_CONNECTIONS = 20
NO_TEMPORAL = "127.0.0.1:1"


@pytest.fixture(scope="module")
def small_shard_url() -> Iterator[str]:
    """A server whose max_connections cannot hold the API's default pool (10 + 10)."""
    root = Path(tempfile.mkdtemp(prefix="tenantry-test-small-shard-"))
    url, server = start_embedded_postgres(root / "data")
    try:
        server.psql(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")  # takes a restart
        server.cleanup()
        url, server = start_embedded_postgres(root / "data")
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def _env(
    database_urls: DatabaseUrls, shards: dict[str, str], pool_size: int = 10, max_overflow: int = 10
) -> dict[str, str]:
    return service_env(
        database_urls.api,
        NO_TEMPORAL,
        "shard-budget-queue",
        TENANTRY_SHARDS=json.dumps(shards),
        TENANTRY_DB_POOL_SIZE=str(pool_size),
        TENANTRY_DB_MAX_OVERFLOW=str(max_overflow),
    )


def _plain_lines(service: ServiceProcess) -> list[str]:
    lines = []
    for line in service.log_path.read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            lines.append(line)
    return lines


def test_pools_on_one_server_add_up_in_the_refusal() -> None:
    budget = ConnectionBudget(max_connections=20, superuser_reserved=3, reserved=0, in_use=1)
    assert refusal("tenant-api", ConnectionNeed(4, 4, pools=2), budget, "shard b, shard c") is None
    assert refusal("tenant-api", ConnectionNeed(5, 4, pools=2), budget, "shard b, shard c") == (
        "tenant-api: its database pools for shard b, shard c cannot fit: it may open 18 connections "
        "(2 pools x (TENANTRY_DB_POOL_SIZE 5 + TENANTRY_DB_MAX_OVERFLOW 4)) but only 16 are free "
        "(max_connections 20 - 3 reserved - 1 in use); lower the pool settings or raise max_connections"
    )
    # The control plane's pool and a shard's on the same server, with the LISTEN connections.
    assert ConnectionNeed(10, 10, direct=API_LISTEN_CONNECTIONS, pools=2).total == 42


def test_servers_are_told_apart_by_host_and_port() -> None:
    socket = "postgresql+asyncpg://tenantry_api:pw@/postgres?host=/tmp/sock1"
    assert server_of(socket) == ("/tmp/sock1", 5432)
    assert server_of("postgresql+asyncpg://u:p@db1:6432/a") == server_of("postgresql+asyncpg://v:q@db1:6432/b")
    assert server_of("postgresql+asyncpg://u:p@db1/a") != server_of("postgresql+asyncpg://u:p@db2/a")


async def test_an_api_whose_pool_cannot_fit_on_a_shard_refuses_to_start_naming_it(
    database_urls: DatabaseUrls, small_shard_url: str
) -> None:
    budget = await read_budget(small_shard_url)
    assert budget.max_connections == MAX_CONNECTIONS
    api = spawn_api(_env(database_urls, {"b": small_shard_url}))
    with stopping(api):
        code = await asyncio.to_thread(api.process.wait, 30)
    assert code == 1, api.log_tail()
    assert "Traceback" not in api.log_path.read_text()
    [line] = _plain_lines(api)
    # The control plane's pool (with its LISTEN connections) fits; b's 10 + 10 do not.
    assert line.startswith(
        "tenant-api: its database pool for shard b cannot fit: it may open 20 connections "
        "(TENANTRY_DB_POOL_SIZE 10 + TENANTRY_DB_MAX_OVERFLOW 10) but only "
    ), line
    assert f"(max_connections {MAX_CONNECTIONS} - " in line


async def test_an_api_whose_pools_fit_on_every_shard_serves(database_urls: DatabaseUrls, small_shard_url: str) -> None:
    budget = await read_budget(small_shard_url)
    api = spawn_api(_env(database_urls, {"b": small_shard_url}, pool_size=budget.free - 4, max_overflow=4))
    with stopping(api):
        await wait_serving(api)
        assert api.stop() == 0
    assert _plain_lines(api) == []


async def test_two_shard_names_for_one_database_share_one_pool(
    database_urls: DatabaseUrls, small_shard_url: str
) -> None:
    """Two TENANTRY_SHARDS names with one URL: one engine (so one pool, one
    rollout lane group, one reconciler check) and one pool in the budget: a
    pool that fits once serves, where two would not fit."""
    made: list[str] = []

    def make_engine(url: str) -> AsyncEngine:
        made.append(url)
        return create_async_engine(url)

    control_plane = create_async_engine(database_urls.api)
    shards = Shards(control_plane, {"b": small_shard_url, "b2": small_shard_url}, make_engine)
    try:
        assert made == [small_shard_url]
        assert shards["b"].engine is shards["b2"].engine
        assert shards.database_of("b") == shards.database_of("b2") != shards.database_of("default") == ""
    finally:
        await shards.dispose()
        await control_plane.dispose()

    budget = await read_budget(small_shard_url)
    env = _env(database_urls, {"b": small_shard_url, "b2": small_shard_url}, pool_size=budget.free - 4, max_overflow=4)
    api = spawn_api(env)
    with stopping(api):
        await wait_serving(api)
        assert api.stop() == 0
    assert _plain_lines(api) == []


async def test_a_shard_unreachable_at_start_is_no_budget_problem(database_urls: DatabaseUrls) -> None:
    """The API starts and serves; health names the shard NOT_SERVING."""
    nowhere = f"postgresql+asyncpg://tenantry_api:pw@127.0.0.1:{free_port()}/tenantry"
    api = spawn_api(_env(database_urls, {"gone": nowhere}, pool_size=2, max_overflow=2))
    with stopping(api):
        await wait_serving(api)
        channel = api_channel(api.address, token=None)
        try:
            stub = health_pb2_grpc.HealthStub(channel)

            async def gone_not_serving() -> bool:
                try:
                    response = await stub.Check(
                        health_pb2.HealthCheckRequest(service=shard_health_name("gone")), timeout=5
                    )
                except Exception:  # noqa: BLE001 - not reported yet
                    return False
                return bool(response.status == health_pb2.HealthCheckResponse.NOT_SERVING)

            assert await eventually(gone_not_serving, timeout=20)
            overall = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert overall.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await channel.close(None)
        assert api.stop() == 0
    assert _plain_lines(api) == []
    assert any("connection budget for shard gone not checked" in line for line in api.log_path.read_text().splitlines())

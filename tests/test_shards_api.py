"""Shards on the API side, against two real PostgreSQL servers: placement at
registration, the gate routing tenant-scoped calls to the tenant's shard,
isolation across the servers, TENANT_MOVING and a schema dropped mid-call on
the remote shard. (A shard that is down: test_shards_down.py.)

Tenants on `b` are made by hand as the worker would make them (the schema on
b as b's worker role, rendered from the lineage, then the ACTIVE row with
shard 'b'): these tests are about the API, not provisioning."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api.headers import TENANT_SLUG_HEADER
from tenant_api.tenant_gate import MOVING_RETRY_AFTER_SECONDS
from tenantry.db import admission
from tenantry.db.engine import driver_of
from tenantry.migrations import tenant_head_revision, tenant_schema_script_at
from tenantry.schema_names import schema_name_for
from tenantry.v1 import project_service_pb2, tenant_pb2, tenant_service_pb2
from tenantry_dev.embedded import DatabaseUrls
from tests.stack import (
    Metadata,
    Stack,
    by_id,
    change_tenant_by_hand,
    eventually,
    expect_error,
    expect_invalid_field,
    fleet_at,
    project_names_in,
    registration,
    retire_fleet,
    running_stack,
    schema_exists,
    shards_with_default,
)

# --- two servers: the control plane's (shard `default`) and b's ----------------------


@pytest.fixture(scope="module")
async def sharded(
    api_engine: AsyncEngine, database_urls: DatabaseUrls, shard_b_urls: DatabaseUrls, temporal_client: Client
) -> AsyncIterator[Stack]:
    """An API with the shards `default` and `b` (as the API's role on each).
    No worker: registered tenants stay CREATING; ACTIVE ones are made by hand."""
    shards = shards_with_default(api_engine, database_urls.api, b=shard_b_urls.api)
    try:
        async with running_stack(engine=api_engine, client=temporal_client, with_worker=False, shards=shards) as stack:
            yield stack
    finally:
        await shards.dispose()


@pytest.fixture(scope="module")
async def registered(engine: AsyncEngine) -> AsyncIterator[list[str]]:
    """Ids of tenants registered here (CREATING forever: no worker); DELETED at
    the end so that later placements elsewhere do not count them."""
    ids: list[str] = []
    yield ids
    if ids:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE tenants SET state = 'DELETED' WHERE id = ANY(CAST(:ids AS uuid[]))"), {"ids": ids}
            )


@pytest.fixture
async def on_b(worker_engine: AsyncEngine, b_worker: AsyncEngine) -> AsyncIterator[uuid.UUID]:
    """One ACTIVE tenant whose schema is on b (and only there)."""
    [tenant_id] = await fleet_at(worker_engine, 1, tenant_head_revision(), shard="b", shard_engine=b_worker)
    yield tenant_id
    await retire_fleet(worker_engine, [tenant_id], shard_engine=b_worker)


@pytest.fixture
async def on_default(worker_engine: AsyncEngine) -> AsyncIterator[uuid.UUID]:
    """One ACTIVE tenant on the control plane's database (shard `default`)."""
    [tenant_id] = await fleet_at(worker_engine, 1, tenant_head_revision())
    yield tenant_id
    await retire_fleet(worker_engine, [tenant_id])


async def live_counts(engine: AsyncEngine, names: list[str]) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT shard, count(*) FROM tenants WHERE state <> 'DELETED' AND shard = ANY(:names) GROUP BY shard"),
            {"names": names},
        )
        counts = {shard: count for shard, count in rows.all()}
    return {name: counts.get(name, 0) for name in names}


def fewest(counts: dict[str, int]) -> str:
    """The placement rule: fewest live tenants, ties to the first name."""
    return min(counts, key=lambda name: (counts[name], name))


async def get_tenant(stack: Stack, tenant_id: str) -> tenant_pb2.Tenant:
    request = tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id)
    return (await stack.stubs.tenants.GetTenant(request, timeout=10)).tenant


async def slug_of(engine: AsyncEngine, tenant_id: uuid.UUID) -> str:
    async with engine.connect() as conn:
        slug = await conn.scalar(text("SELECT slug FROM tenants WHERE id = :id"), {"id": tenant_id})
    assert isinstance(slug, str)
    return slug


async def create_project(stack: Stack, metadata: Metadata, name: str) -> project_service_pb2.Project:
    request = project_service_pb2.CreateProjectRequest(name=name)
    return (await stack.stubs.projects.CreateProject(request, metadata=metadata, timeout=10)).project


async def list_names(stack: Stack, metadata: Metadata) -> list[str]:
    response = await stack.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=metadata, timeout=10
    )
    return sorted(p.name for p in response.projects)


# --- placement -----------------------------------------------------------------------


async def test_register_with_a_shard_places_the_tenant_there(
    sharded: Stack, engine: AsyncEngine, registered: list[str]
) -> None:
    response = await sharded.stubs.tenants.RegisterTenant(registration(shard="b"), timeout=30)
    registered.append(response.tenant.id)
    assert response.tenant.shard == "b"
    assert (await get_tenant(sharded, response.tenant.id)).shard == "b"
    by_slug = await sharded.stubs.tenants.GetTenant(
        tenant_service_pb2.GetTenantRequest(slug=response.tenant.slug), timeout=10
    )
    assert by_slug.tenant.shard == "b"
    listed = await sharded.stubs.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(page_size=500), timeout=10)
    assert {t.id: t.shard for t in listed.tenants}[response.tenant.id] == "b"
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT shard FROM tenants WHERE id = :id"), {"id": response.tenant.id}) == "b"
    # A replay of the same request is the same tenant, on the same shard.
    request_id = str(uuid.uuid4())
    first = await sharded.stubs.tenants.RegisterTenant(registration(shard="b", request_id=request_id), timeout=30)
    registered.append(first.tenant.id)
    again = await sharded.stubs.tenants.RegisterTenant(
        registration(first.tenant.slug, shard="b", request_id=request_id), timeout=30
    )
    assert (again.tenant.id, again.tenant.shard) == (first.tenant.id, "b")


@pytest.mark.parametrize("shard", ["c", "nowhere", "B", "1b", "b c", "b;drop", "x" * 32])
async def test_unknown_or_malformed_shard_is_invalid_field(sharded: Stack, engine: AsyncEngine, shard: str) -> None:
    request = registration(shard=shard)
    await expect_invalid_field(sharded.stubs.tenants.RegisterTenant(request, timeout=10), "shard")
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM tenants WHERE slug = :s"), {"s": request.slug}) == 0


async def test_without_a_hint_the_shard_with_fewest_live_tenants_wins(
    api_engine: AsyncEngine,
    engine: AsyncEngine,
    database_urls: DatabaseUrls,
    shard_b_urls: DatabaseUrls,
    temporal_client: Client,
    registered: list[str],
) -> None:
    """Counts read first, then each registration must land on the shard with
    the fewest live tenants (ties to the first name). Two names for b's
    database (`b` and `c`, counted apart) with few tenants each make the
    placement alternate between them, whatever `default` holds."""
    shards = shards_with_default(api_engine, database_urls.api, b=shard_b_urls.api, c=shard_b_urls.api)
    try:
        async with running_stack(engine=api_engine, client=temporal_client, with_worker=False, shards=shards) as api:
            placed = []
            for _ in range(4):
                counts = await live_counts(engine, shards.names)
                response = await api.stubs.tenants.RegisterTenant(registration(), timeout=30)
                registered.append(response.tenant.id)
                assert response.tenant.shard == fewest(counts), (counts, response.tenant.shard)
                placed.append(response.tenant.shard)
            # A DELETED tenant does not count: retiring the latest makes its shard the emptier one again.
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE tenants SET state = 'DELETED' WHERE id = :id"), {"id": registered[-1]})
            counts = await live_counts(engine, shards.names)
            assert fewest(counts) == placed[-1]
            response = await api.stubs.tenants.RegisterTenant(registration(), timeout=30)
            registered.append(response.tenant.id)
            assert response.tenant.shard == placed[-1]
    finally:
        await shards.dispose()


async def test_tenants_of_the_default_shard_say_so(sharded: Stack, on_default: uuid.UUID) -> None:
    assert (await get_tenant(sharded, str(on_default))).shard == "default"


# --- routing ---------------------------------------------------------------------------


async def test_project_calls_for_a_b_tenant_read_and_write_b(
    sharded: Stack, on_b: uuid.UUID, engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    schema = schema_name_for(on_b)
    tenant = await get_tenant(sharded, str(on_b))
    assert (tenant.shard, tenant.state) == ("b", tenant_pb2.TENANT_STATE_ACTIVE)
    slug: Metadata = ((TENANT_SLUG_HEADER, await slug_of(engine, on_b)),)

    created = await create_project(sharded, by_id(str(on_b)), "by-id")
    await create_project(sharded, slug, "by-slug")
    # On b, and only there: the control plane's server has no such schema.
    assert await project_names_in(b_admin, schema) == ["by-id", "by-slug"]
    assert not await schema_exists(engine, schema)

    for metadata in (by_id(str(on_b)), slug):
        assert await list_names(sharded, metadata) == ["by-id", "by-slug"]
        got = await sharded.stubs.projects.GetProject(
            project_service_pb2.GetProjectRequest(project_id=created.id), metadata=metadata, timeout=10
        )
        assert got.project.name == "by-id"
    await sharded.stubs.projects.DeleteProject(
        project_service_pb2.DeleteProjectRequest(project_id=created.id), metadata=slug, timeout=10
    )
    assert await project_names_in(b_admin, schema) == ["by-slug"]
    await expect_error(
        create_project(sharded, by_id(str(on_b)), "by-slug"), grpc.StatusCode.ALREADY_EXISTS, "PROJECT_NAME_TAKEN"
    )


async def test_tenants_on_two_servers_never_see_each_other(
    sharded: Stack, on_b: uuid.UUID, on_default: uuid.UUID, engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    b_meta, default_meta = by_id(str(on_b)), by_id(str(on_default))
    on_b_project = await create_project(sharded, b_meta, "same-name")
    on_default_project = await create_project(sharded, default_meta, "same-name")
    await create_project(sharded, b_meta, "only-b")
    await create_project(sharded, default_meta, "only-default")
    assert await list_names(sharded, b_meta) == ["only-b", "same-name"]
    assert await list_names(sharded, default_meta) == ["only-default", "same-name"]
    for metadata, other in ((b_meta, on_default_project), (default_meta, on_b_project)):
        await expect_error(
            sharded.stubs.projects.GetProject(
                project_service_pb2.GetProjectRequest(project_id=other.id), metadata=metadata, timeout=10
            ),
            grpc.StatusCode.NOT_FOUND,
            "PROJECT_NOT_FOUND",
        )
    # Each schema exists on its own server only.
    assert await schema_exists(b_admin, schema_name_for(on_b))
    assert not await schema_exists(engine, schema_name_for(on_b))
    assert await schema_exists(engine, schema_name_for(on_default))
    assert not await schema_exists(b_admin, schema_name_for(on_default))


async def test_a_schema_of_the_same_name_on_the_other_server_is_never_used(
    sharded: Stack,
    on_b: uuid.UUID,
    on_default: uuid.UUID,
    engine: AsyncEngine,
    b_admin: AsyncEngine,
    worker_engine: AsyncEngine,
    b_worker: AsyncEngine,
) -> None:
    """A decoy: each tenant's schema name created on the OTHER server with a
    project in it. Calls keep going to the tenant's own shard (routing is by
    the row's shard, never by whichever server has a schema of that name)."""
    revision = tenant_head_revision()
    # Made by the worker's role on each server, so the API's role could read them.
    decoys = ((worker_engine, schema_name_for(on_b)), (b_worker, schema_name_for(on_default)))
    for server, schema in decoys:
        async with server.begin() as conn:
            await (await driver_of(conn)).execute(tenant_schema_script_at(schema, revision))
            await conn.execute(
                text(f"INSERT INTO \"{schema}\".projects (id, name, description) VALUES (:id, 'decoy', '')"),
                {"id": uuid.uuid4()},
            )
    try:
        await create_project(sharded, by_id(str(on_b)), "real-b")
        await create_project(sharded, by_id(str(on_default)), "real-default")
        assert await list_names(sharded, by_id(str(on_b))) == ["real-b"]
        assert await list_names(sharded, by_id(str(on_default))) == ["real-default"]
        assert await project_names_in(b_admin, schema_name_for(on_b)) == ["real-b"]
        assert await project_names_in(engine, schema_name_for(on_default)) == ["real-default"]
    finally:
        for server, schema in decoys:
            async with server.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


# --- the gate: moving, and a schema dropped mid-call ----------------------------------


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError(f"no RetryInfo on {error.code()}: {error.details()}")


def project_calls(stack: Stack, metadata: Metadata) -> list[Callable[[], Awaitable[Any]]]:
    projects = stack.stubs.projects
    some_id = str(uuid.uuid4())
    return [
        lambda: projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata, timeout=10),
        lambda: projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=f"m-{uuid.uuid4().hex[:6]}"), metadata=metadata, timeout=10
        ),
        lambda: projects.GetProject(
            project_service_pb2.GetProjectRequest(project_id=some_id), metadata=metadata, timeout=10
        ),
        lambda: projects.DeleteProject(
            project_service_pb2.DeleteProjectRequest(project_id=some_id), metadata=metadata, timeout=10
        ),
    ]


@pytest.mark.parametrize("where", ["b", "default"])
async def test_a_moving_tenant_is_unavailable_with_retry_info(
    sharded: Stack, on_b: uuid.UUID, on_default: uuid.UUID, engine: AsyncEngine, b_admin: AsyncEngine, where: str
) -> None:
    tenant_id = on_b if where == "b" else on_default
    slug: Metadata = ((TENANT_SLUG_HEADER, await slug_of(engine, tenant_id)),)
    await create_project(sharded, by_id(str(tenant_id)), "before")
    await change_tenant_by_hand(engine, tenant_id, "moving = true", fencing=b_admin if where == "b" else engine)
    try:
        for metadata in (by_id(str(tenant_id)), slug):
            for call in project_calls(sharded, metadata):
                error = await expect_error(call(), grpc.StatusCode.UNAVAILABLE, "TENANT_MOVING")
                assert retry_delay(error) == MOVING_RETRY_AFTER_SECONDS
        # The control plane still answers for it (only tenant-scoped calls wait).
        assert (await get_tenant(sharded, str(tenant_id))).state == tenant_pb2.TENANT_STATE_ACTIVE
    finally:
        await change_tenant_by_hand(engine, tenant_id, "moving = false")
    assert await list_names(sharded, slug) == ["before"]  # nothing written while refused


async def test_schema_dropped_on_b_mid_call_is_tenant_deleted(
    sharded: Stack, on_b: uuid.UUID, engine: AsyncEngine, b_admin: AsyncEngine, b_worker: AsyncEngine
) -> None:
    """The call is admitted and waits on b for a lock held by a transaction
    that then drops the tenant's schema: once that commits, the call fails
    on b with the schema gone, and the gate says TENANT_DELETED (never
    INTERNAL) although the control plane's row still says ACTIVE."""
    schema = schema_name_for(on_b)
    metadata = by_id(str(on_b))
    await create_project(sharded, metadata, "warm")  # b's pool and statement cache know the schema
    for call in project_calls(sharded, metadata):
        async with b_admin.connect() as blocker:
            await blocker.begin()
            await blocker.execute(text(f'LOCK TABLE "{schema}".projects IN ACCESS EXCLUSIVE MODE'))
            pending = asyncio.ensure_future(call())
            await wait_for_lock_waiter(b_admin, schema)
            await blocker.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            await blocker.commit()
        await expect_error(pending, grpc.StatusCode.NOT_FOUND, "TENANT_DELETED")
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT state FROM tenants WHERE id = :id"), {"id": on_b}) == "ACTIVE"
        # Put it back for the next call (as b's worker role would have made it).
        async with b_worker.begin() as conn:
            await (await driver_of(conn)).execute(tenant_schema_script_at(schema, tenant_head_revision()))
        await create_project(sharded, metadata, f"again-{uuid.uuid4().hex[:6]}")


async def wait_for_lock_waiter(admin: AsyncEngine, schema: str, timeout: float = 10) -> None:
    """Until a session on `admin`'s server waits for a lock on `schema`.projects."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with admin.connect() as conn:
        while True:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE NOT l.granted AND n.nspname = :schema AND c.relname = 'projects'"
                ),
                {"schema": schema},
            )
            await conn.rollback()
            if waiting:
                return
            assert loop.time() < deadline, "the call never waited on the lock"
            await asyncio.sleep(0.02)


async def test_the_row_decides_the_shard_on_every_call(
    sharded: Stack, on_b: uuid.UUID, engine: AsyncEngine, worker_engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    """The gate remembers where it last admitted a remote tenant, to admit
    it there by b's admission row (by id) or to open the call's transaction
    there while it reads the row (by slug): only a guess. A placement
    switched by hand (as a move's switch does: the shard it leaves fenced
    first) is followed on the very next call, both ways, by id and by slug."""
    schema = schema_name_for(on_b)
    metadata = by_id(str(on_b))
    slug: Metadata = ((TENANT_SLUG_HEADER, await slug_of(engine, on_b)),)
    await create_project(sharded, metadata, "on-b")
    for _ in range(2):  # remembered on b now
        assert await list_names(sharded, metadata) == ["on-b"]
        assert await list_names(sharded, slug) == ["on-b"]
    # A copy of the schema on the control plane's server with other data; then the switch.
    async with worker_engine.begin() as conn:
        await (await driver_of(conn)).execute(tenant_schema_script_at(schema, tenant_head_revision()))
        await conn.execute(
            text(f"INSERT INTO \"{schema}\".projects (id, name, description) VALUES (:id, 'on-default', '')"),
            {"id": uuid.uuid4()},
        )
    try:
        for shard, expected in (("default", ["on-default"]), ("b", ["on-b"]), ("default", ["on-default"])):
            leaving = b_admin if shard == "default" else engine
            await change_tenant_by_hand(engine, on_b, f"shard = '{shard}'", fencing=leaving)
            for _ in range(2):
                assert await list_names(sharded, metadata) == expected, shard
                assert await list_names(sharded, slug) == expected, shard
    finally:
        await change_tenant_by_hand(engine, on_b, "shard = 'b'", fencing=engine)
        async with worker_engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


# --- admission on the shard itself (tenantry.db.admission) ----------------------------


async def admission_row(shard: AsyncEngine, tenant_id: uuid.UUID) -> tuple[int, bool] | None:
    async with shard.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT version, admit FROM tenant_admission WHERE tenant_id = :id"), {"id": tenant_id}
            )
        ).one_or_none()
    return None if row is None else (row.version, row.admit)


async def tenant_version(engine: AsyncEngine, tenant_id: uuid.UUID) -> int:
    async with engine.connect() as conn:
        version = await conn.scalar(text("SELECT version FROM tenants WHERE id = :id"), {"id": tenant_id})
    assert isinstance(version, int)
    return version


async def admitted_on_b(engine: AsyncEngine, b_admin: AsyncEngine, tenant_id: uuid.UUID) -> bool:
    """b's admission row admits the tenant at its current control-plane version."""
    return await admission_row(b_admin, tenant_id) == (await tenant_version(engine, tenant_id), True)


async def test_a_b_tenant_once_admitted_is_admitted_by_b_alone(
    sharded: Stack, on_b: uuid.UUID, engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    """The first call is admitted by the control plane's row, which b's
    admission row then records; from there a call by id is admitted on b in
    the round trip that opens its transaction: it is served while the control
    plane's tenants table is locked against every reader."""
    metadata = by_id(str(on_b))
    await create_project(sharded, metadata, "first")
    assert await eventually(functools.partial(admitted_on_b, engine, b_admin, on_b), timeout=10)
    async with engine.connect() as blocker:
        await blocker.begin()
        await blocker.execute(text("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"))
        await create_project(sharded, metadata, "second")
        assert await list_names(sharded, metadata) == ["first", "second"]
        await blocker.rollback()


async def test_suspend_and_delete_fence_b_before_they_commit(
    sharded: Stack, on_b: uuid.UUID, engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    """Each change that stops a b tenant serving writes b's fence first: the
    very next call is refused with the control plane's reason, never admitted
    by b's earlier row; the changes that let it serve again need nothing on b
    (its next admission records them)."""
    tenants = sharded.stubs.tenants
    metadata = by_id(str(on_b))
    for refuse, reason, restore in (
        (
            lambda: tenants.SuspendTenant(
                tenant_service_pb2.SuspendTenantRequest(tenant_id=str(on_b), reason="billing"), timeout=10
            ),
            "TENANT_SUSPENDED",
            lambda: tenants.ResumeTenant(tenant_service_pb2.ResumeTenantRequest(tenant_id=str(on_b)), timeout=10),
        ),
        (
            lambda: tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=str(on_b)), timeout=10),
            "TENANT_DELETING",
            lambda: tenants.UndeleteTenant(tenant_service_pb2.UndeleteTenantRequest(tenant_id=str(on_b)), timeout=10),
        ),
    ):
        assert await list_names(sharded, metadata) == []
        assert await eventually(functools.partial(admitted_on_b, engine, b_admin, on_b), timeout=10)
        await refuse()
        assert await admission_row(b_admin, on_b) == (await tenant_version(engine, on_b), False)
        for call in project_calls(sharded, metadata):
            await expect_error(call(), grpc.StatusCode.FAILED_PRECONDITION, reason)
        await restore()
    assert await list_names(sharded, metadata) == []


async def test_a_stale_admission_never_overrides_a_fence(b_admin: AsyncEngine) -> None:
    """The two writers of an admission row, in both orders: an admit computed
    from a row read before a restrictive change (a lower version) loses to
    that change's fence whether it lands before or after it; an admit from a
    later version wins; one at the same version only refreshes an admitted row."""
    tenant_id = uuid.uuid4()

    async def run(statement: Any) -> tuple[int, bool] | None:
        async with b_admin.begin() as conn:
            await conn.execute(text(statement) if isinstance(statement, str) else statement)
        return await admission_row(b_admin, tenant_id)

    try:
        assert await run(admission.admit_statement(tenant_id, 4, "t0002")) == (4, True)
        assert await run(admission.fence(tenant_id, 5)) == (5, False)  # the admit landed first
        assert await run(admission.admit_statement(tenant_id, 4, "t0002")) == (5, False)  # a late one
        assert await run(admission.admit_statement(tenant_id, 5, "t0002")) == (5, False)  # same version, fenced
        assert await run(admission.fence(tenant_id, 3)) == (5, False)  # a fence never lowers the version
        assert await run(admission.admit_statement(tenant_id, 6, "t0002")) == (6, True)  # resumed since
        assert await run(admission.admit_statement(tenant_id, 6, "t0003")) == (6, True)
        async with b_admin.connect() as conn:
            assert (
                await conn.scalar(
                    text("SELECT schema_version FROM tenant_admission WHERE tenant_id = :id"), {"id": tenant_id}
                )
                == "t0003"
            )
        assert await run(admission.fence(tenant_id, 7)) == (7, False)
    finally:
        async with b_admin.begin() as conn:
            await conn.execute(text("DELETE FROM tenant_admission WHERE tenant_id = :id"), {"id": tenant_id})


async def test_a_fence_whose_change_never_committed_costs_speed_not_service(
    sharded: Stack, on_b: uuid.UUID, engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    """A suspend that fenced b and then lost its control-plane commit (a
    crash between the two): the tenant still serves, by id and by slug,
    through the control plane's row; the gate's later admissions cannot lift
    a fence of a version the control plane has not reached, and the tenant's
    next changes (here a suspend and a resume) make b admit it again."""
    metadata = by_id(str(on_b))
    slug: Metadata = ((TENANT_SLUG_HEADER, await slug_of(engine, on_b)),)
    await create_project(sharded, metadata, "before")
    assert await eventually(functools.partial(admitted_on_b, engine, b_admin, on_b), timeout=10)
    version = await tenant_version(engine, on_b)
    async with b_admin.begin() as conn:
        await conn.execute(text(admission.fence(on_b, version + 1)))
    for _ in range(3):
        assert await list_names(sharded, metadata) == ["before"]
        assert await list_names(sharded, slug) == ["before"]
    await asyncio.sleep(0.2)  # the gate's admission writes, refused by the fence
    assert await admission_row(b_admin, on_b) == (version + 1, False)

    tenants = sharded.stubs.tenants
    await tenants.SuspendTenant(tenant_service_pb2.SuspendTenantRequest(tenant_id=str(on_b), reason="heal"), timeout=10)
    await expect_error(list_names(sharded, metadata), grpc.StatusCode.FAILED_PRECONDITION, "TENANT_SUSPENDED")
    await tenants.ResumeTenant(tenant_service_pb2.ResumeTenantRequest(tenant_id=str(on_b)), timeout=10)
    assert await list_names(sharded, metadata) == ["before"]
    assert await eventually(functools.partial(admitted_on_b, engine, b_admin, on_b), timeout=10)


async def test_a_shard_without_its_admission_table_serves_and_refuses_only_what_needs_it(
    sharded: Stack, on_b: uuid.UUID, engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    """A shard where `tenantry-migrate` has not run since upgrading: its
    tenants' calls are admitted by the control plane's row as before, and a
    suspend, which cannot fence b, is UNAVAILABLE SHARD_UNAVAILABLE with
    nothing changed (never INTERNAL)."""
    metadata = by_id(str(on_b))
    await create_project(sharded, metadata, "before")
    assert await eventually(functools.partial(admitted_on_b, engine, b_admin, on_b), timeout=10)
    async with b_admin.begin() as conn:
        await conn.execute(text("ALTER TABLE tenant_admission RENAME TO tenant_admission_away"))
    try:
        for _ in range(3):
            assert await list_names(sharded, metadata) == ["before"]
        await expect_error(
            sharded.stubs.tenants.SuspendTenant(
                tenant_service_pb2.SuspendTenantRequest(tenant_id=str(on_b), reason="no table"), timeout=10
            ),
            grpc.StatusCode.UNAVAILABLE,
            "SHARD_UNAVAILABLE",
        )
        assert (await get_tenant(sharded, str(on_b))).state == tenant_pb2.TENANT_STATE_ACTIVE
    finally:
        async with b_admin.begin() as conn:
            await conn.execute(text("ALTER TABLE tenant_admission_away RENAME TO tenant_admission"))
    assert await list_names(sharded, metadata) == ["before"]


async def test_a_move_to_another_name_for_the_same_database_is_already_on_shard(
    api_engine: AsyncEngine,
    database_urls: DatabaseUrls,
    shard_b_urls: DatabaseUrls,
    temporal_client: Client,
    on_b: uuid.UUID,
    b_admin: AsyncEngine,
) -> None:
    """`c` names b's database too: the tenant's schema is there already, and
    a move would build the target over the live schema. Refused, nothing started."""
    shards = shards_with_default(api_engine, database_urls.api, b=shard_b_urls.api, c=shard_b_urls.api)
    try:
        async with running_stack(engine=api_engine, client=temporal_client, with_worker=False, shards=shards) as api:
            error = await expect_error(
                api.stubs.tenants.MoveTenant(
                    tenant_service_pb2.MoveTenantRequest(tenant_id=str(on_b), target_shard="c"), timeout=10
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "ALREADY_ON_SHARD",
            )
            assert "same database" in (error.details() or "")
    finally:
        await shards.dispose()
    assert await schema_exists(b_admin, schema_name_for(on_b))


async def test_a_call_failed_by_a_stale_admission_row_asks_the_control_plane_next_time(
    sharded: Stack, on_b: uuid.UUID, engine: AsyncEngine, worker_engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    """A row on b that admits a tenant who is no longer there (no fence: as
    after restoring b from a backup): the call it admits fails on b, is
    explained (TENANT_MOVING: the control plane places it elsewhere), and the
    next call is admitted by the control plane's row, on its real shard."""
    schema = schema_name_for(on_b)
    metadata = by_id(str(on_b))
    await create_project(sharded, metadata, "on-b")
    assert await eventually(functools.partial(admitted_on_b, engine, b_admin, on_b), timeout=10)
    assert await list_names(sharded, metadata) == ["on-b"]  # admitted by b's row from here
    async with worker_engine.begin() as conn:
        await (await driver_of(conn)).execute(tenant_schema_script_at(schema, tenant_head_revision()))
    try:
        await change_tenant_by_hand(engine, on_b, "shard = 'default'")  # b not fenced
        async with b_admin.begin() as conn:
            await conn.execute(text(f'ALTER SCHEMA "{schema}" RENAME TO "{schema}_away"'))
        await expect_error(list_names(sharded, metadata), grpc.StatusCode.UNAVAILABLE, "TENANT_MOVING")
        assert await list_names(sharded, metadata) == []  # default's copy
    finally:
        await change_tenant_by_hand(engine, on_b, "shard = 'b'", fencing=engine)
        async with b_admin.begin() as conn:
            await conn.execute(text(f'ALTER SCHEMA "{schema}_away" RENAME TO "{schema}"'))
        async with worker_engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))

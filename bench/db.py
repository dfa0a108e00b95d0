"""Raw asyncpg: the database floors, the seeding fast path, and the listener
that timestamps workflow outcomes (the control plane's own NOTIFY)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable

import asyncpg

from tenantry.migrations import tenant_schema_script
from tenantry.schema_names import SCHEMA_NAME_FROM_ID_SQL, quote_schema, schema_name_for
from tenantry.workflow_contract import provision_workflow_id

NOTIFY_CHANNEL = "tenantry_operation_done"

# The three inserts of RegisterTenant's one statement (tenantry/db/tenants.py), as raw SQL.
UPSERT_USER = (
    "INSERT INTO users (id, email, display_name) VALUES ($1, $2, $3) "
    "ON CONFLICT ((lower(email))) DO UPDATE SET email = users.email RETURNING id, email"
)
INSERT_TENANT = (
    "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name) "
    "VALUES ($1, $2, $3, $4, 'CREATING', $5) RETURNING *"
)
INSERT_OPERATION = (
    "INSERT INTO workflow_executions (workflow_id, tenant_id, kind, state, request_id) "
    "VALUES ($1, $2, 'PROVISION', 'PENDING', NULL) RETURNING *"
)


async def register_floor_once(pool: asyncpg.Pool, tag: str) -> uuid.UUID:
    """User upsert + tenant insert + operation insert in one transaction."""
    tenant_id = uuid.uuid4()
    slug = f"floor-{tag}"
    async with pool.acquire() as conn, conn.transaction():
        user = await conn.fetchrow(UPSERT_USER, uuid.uuid4(), f"admin@{slug}.example.com", "Ada Admin")
        await conn.fetchrow(INSERT_TENANT, tenant_id, slug, f"Tenant {slug}", user["id"], schema_name_for(tenant_id))
        await conn.fetchrow(INSERT_OPERATION, provision_workflow_id(tenant_id), tenant_id)
    return tenant_id


async def remove_floor_rows(pool: asyncpg.Pool) -> None:
    """The database floor's rows are not tenants: gone before anything else runs."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM workflow_executions WHERE tenant_id IN (SELECT id FROM tenants WHERE slug LIKE 'floor-%')"
        )
        await conn.execute("DELETE FROM tenants WHERE slug LIKE 'floor-%'")
        await conn.execute("DELETE FROM users WHERE email LIKE 'admin@floor-%'")


async def ddl_floor_once(pool: asyncpg.Pool, schema: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(tenant_schema_script(schema))


async def drop_schemas(pool: asyncpg.Pool, schemas: Iterable[str]) -> None:
    names = list(schemas)
    for start in range(0, len(names), 50):
        statement = "".join(f"DROP SCHEMA IF EXISTS {quote_schema(n)} CASCADE;" for n in names[start : start + 50])
        async with pool.acquire() as conn:
            await conn.execute(statement)


async def seed_active_tenants(pool: asyncpg.Pool, count: int, batch: int, first_index: int) -> None:
    """The growth scenario's fast path: ACTIVE tenant rows and their schemas
    (tables, index, version stamp) created with raw SQL, `batch` per transaction."""
    async with pool.acquire() as conn:
        seed_user = await conn.fetchval(UPSERT_USER, uuid.uuid4(), "admin@seed.bench.example.com", "Seed Admin")

    async def one_batch(start: int, size: int) -> None:
        ids = [uuid.uuid4() for _ in range(size)]
        slugs = [f"seed-{first_index + start + i:07d}" for i in range(size)]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name) "
                f"SELECT id, slug, 'Seeded ' || slug, $3, 'ACTIVE', {SCHEMA_NAME_FROM_ID_SQL} "
                "FROM unnest($1::uuid[], $2::text[]) AS s(id, slug)",
                ids,
                slugs,
                seed_user,
            )
            await conn.execute(
                "INSERT INTO tenant_memberships (tenant_id, user_id, role) "
                "SELECT id, $2, 'admin' FROM unnest($1::uuid[]) AS s(id)",
                ids,
                seed_user,
            )
            await conn.execute("".join(tenant_schema_script(schema_name_for(i)) for i in ids))

    starts = list(range(0, count, batch))
    # Two at a time: the machine has few cores and PostgreSQL's lock table is finite.
    semaphore = asyncio.Semaphore(2)

    async def guarded(start: int) -> None:
        async with semaphore:
            await one_batch(start, min(batch, count - start))

    await asyncio.gather(*(guarded(start) for start in starts))


class Outcomes:
    """Timestamps (time.perf_counter) of operations reaching a final state, from
    the control plane's `tenantry_operation_done` notifications: sent at the
    commit that made the tenant ACTIVE or DELETED."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self.done_at: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self._dsn)
        await self._conn.add_listener(NOTIFY_CHANNEL, self._on_notify)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _on_notify(self, _conn: object, _pid: int, _channel: str, workflow_id: str) -> None:
        now = time.perf_counter()
        self.done_at.setdefault(workflow_id, now)
        waiter = self._waiters.pop(workflow_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)

    async def wait(self, workflow_id: str, timeout: float) -> float:
        if workflow_id in self.done_at:
            return self.done_at[workflow_id]
        future = self._waiters.get(workflow_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters[workflow_id] = future
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def wait_all(self, workflow_ids: Iterable[str], timeout: float) -> dict[str, float]:
        """Outcome times of those that finished within `timeout` (others missing)."""
        ids = list(workflow_ids)
        deadline = time.perf_counter() + timeout
        results: dict[str, float] = {}
        for workflow_id in ids:
            remaining = deadline - time.perf_counter()
            try:
                results[workflow_id] = await self.wait(workflow_id, max(remaining, 0.001))
            except TimeoutError:
                break
        for workflow_id in ids:
            if workflow_id in self.done_at:
                results[workflow_id] = self.done_at[workflow_id]
        return results

    @staticmethod
    def provisioned(tenant_id: str | uuid.UUID) -> str:
        return provision_workflow_id(uuid.UUID(str(tenant_id)))

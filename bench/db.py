"""Raw asyncpg: the database floors, the seeding fast path, and the listener
that timestamps workflow outcomes (the control plane's own NOTIFY)."""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from tenantry.db import tenants as tenant_sql
from tenantry.migrations import tenant_head_revision, tenant_schema_script
from tenantry.schema_names import SCHEMA_NAME_FROM_ID_SQL, quote_schema, schema_name_for
from tenantry.settings import DEFAULT_SHARD
from tenantry.states import TenantState
from tenantry.workflow_contract import provision_workflow_id

NOTIFY_CHANNEL = "tenantry_operation_done"

# The user upsert of the growth scenario's seeding fast path.
UPSERT_USER = (
    "INSERT INTO users (id, email, display_name) VALUES ($1, $2, $3) "
    "ON CONFLICT ((lower(email))) DO UPDATE SET email = users.email RETURNING id, email"
)
# Slugs of the database floor's registrations (rows without a workflow).
FLOOR_SLUG_PREFIX = "floor-"


@dataclass(frozen=True)
class RawStatement:
    """A product statement rendered once for raw asyncpg: the same SQL text
    SQLAlchemy sends (numbered parameters), its parameter names in order, and
    the values bound when it was built."""

    sql: str
    names: tuple[str, ...]
    bound: dict[str, Any]

    @classmethod
    def of(cls, statement: ClauseElement) -> RawStatement:
        dialect = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's asyncpg dialect is untyped
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        return cls(compiled.string, tuple(compiled.positiontup or ()), dict(compiled.params))

    def args(self, **values: Any) -> list[Any]:
        """Positional arguments: `values` over the bound ones; enum members as their text."""
        merged = {**self.bound, **values}
        return [str(v) if isinstance(v, enum.Enum) else v for v in (merged[n] for n in self.names)]


# RegisterTenant's one statement, exactly as the API sends it (with its event CTEs).
REGISTER = RawStatement.of(tenant_sql._REGISTER)


async def register_floor_once(pool: asyncpg.Pool, tag: str) -> uuid.UUID:
    """RegisterTenant's one statement on a pooled connection in autocommit: one round trip."""
    tenant_id = uuid.uuid4()
    slug = f"{FLOOR_SLUG_PREFIX}{tag}"
    args = REGISTER.args(
        user_id=uuid.uuid4(),
        email=f"admin@{slug}.example.com",
        admin_display_name="Ada Admin",
        tenant_id=tenant_id,
        slug=slug,
        display_name=f"Tenant {slug}",
        schema_name=schema_name_for(tenant_id),
        workflow_id=provision_workflow_id(tenant_id),
        request_id=None,
        actor="bench",
        labels="{}",
        trace_id="",
        shard=DEFAULT_SHARD,
        shards=[DEFAULT_SHARD],
    )
    async with pool.acquire() as conn:
        await conn.fetchrow(REGISTER.sql, *args)
    return tenant_id


async def close_statement_rows(pool: asyncpg.Pool, slug_prefix: str) -> dict[str, int]:
    """Registrations made by the statement alone (no workflow behind them):
    those without an event are removed; those with one cannot be (the event log
    is append-only and references the tenant), so they are closed: operation
    CANCELLED, tenant DELETED."""
    pattern = f"{slug_prefix}%"
    without_event = (
        "SELECT id FROM tenants t WHERE slug LIKE $1 "
        "AND NOT EXISTS (SELECT 1 FROM tenant_events e WHERE e.tenant_id = t.id)"
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"DELETE FROM workflow_executions WHERE tenant_id IN ({without_event})", pattern)
        removed = await conn.fetchval(
            f"WITH gone AS (DELETE FROM tenants WHERE id IN ({without_event}) RETURNING id) SELECT count(*) FROM gone",
            pattern,
        )
        await conn.execute(
            "UPDATE workflow_executions SET state = 'CANCELLED', end_time = now(), update_time = now() "
            "WHERE tenant_id IN (SELECT id FROM tenants WHERE slug LIKE $1) AND state <> 'CANCELLED'",
            pattern,
        )
        closed = await conn.fetchval(
            "WITH closed AS (UPDATE tenants SET state = 'DELETED', delete_time = now(), purge_time = now(), "
            "update_time = now() WHERE slug LIKE $1 AND state <> 'DELETED' RETURNING id) SELECT count(*) FROM closed",
            pattern,
        )
        await conn.execute(
            "DELETE FROM users u WHERE email LIKE $1 "
            "AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.admin_user_id = u.id)",
            f"admin@{pattern}",
        )
    return {"removed_without_event": int(removed), "closed_with_event": int(closed)}


# SuspendTenant's and ResumeTenant's state change (tenantry.db.tenants.change_state),
# as the API sends it: the floor of a synchronous state change.
_ANY_TENANT = uuid.UUID(int=0)
SUSPEND = RawStatement.of(tenant_sql.change_state(_ANY_TENANT, TenantState.ACTIVE, TenantState.SUSPENDED, "bench"))
RESUME = RawStatement.of(tenant_sql.change_state(_ANY_TENANT, TenantState.SUSPENDED, TenantState.ACTIVE, ""))


async def change_state_floor_once(pool: asyncpg.Pool, statement: RawStatement, tenant_id: uuid.UUID) -> None:
    """The state change's one UPDATE on a pooled connection in autocommit; it must change the row."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(statement.sql, *statement.args(id_1=tenant_id))
    if row is None:
        raise RuntimeError(f"floor tenant {tenant_id} was not in the state the change expects")


async def seeded_tenant_ids(pool: asyncpg.Pool, first_index: int, count: int) -> list[uuid.UUID]:
    """Ids of the tenants `seed_active_tenants(..., first_index)` made."""
    slugs = [f"seed-{first_index + i:07d}" for i in range(count)]
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id FROM tenants WHERE slug = ANY($1::text[]) ORDER BY slug", slugs)
    return [row["id"] for row in rows]


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
                "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name, schema_version) "
                f"SELECT id, slug, 'Seeded ' || slug, $3, 'ACTIVE', {SCHEMA_NAME_FROM_ID_SQL}, $4 "
                "FROM unnest($1::uuid[], $2::text[]) AS s(id, slug)",
                ids,
                slugs,
                seed_user,
                tenant_head_revision(),
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


async def seed_tenant_on_shard(pool: asyncpg.Pool, shard_dsn: str, shard: str) -> uuid.UUID:
    """One ACTIVE tenant on another shard, made as the worker makes one: its
    schema on that shard's database first (`shard_dsn`: the worker's role
    there, which owns tenant schemas), then its row in the control plane
    (`pool`) naming the shard."""
    tenant_id = uuid.uuid4()
    shard_conn = await asyncpg.connect(shard_dsn)
    try:
        async with shard_conn.transaction():
            await shard_conn.execute(tenant_schema_script(schema_name_for(tenant_id)))
    finally:
        await shard_conn.close()
    async with pool.acquire() as conn, conn.transaction():
        user = await conn.fetchval(UPSERT_USER, uuid.uuid4(), "admin@shard.bench.example.com", "Shard Admin")
        await conn.execute(
            "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name, schema_version, shard) "
            "VALUES ($1, $2, 'On a shard', $3, 'ACTIVE', $4, $5, $6)",
            tenant_id,
            f"shard-{shard}-{tenant_id.hex[:12]}",
            user,
            schema_name_for(tenant_id),
            tenant_head_revision(),
            shard,
        )
        await conn.execute(
            "INSERT INTO tenant_memberships (tenant_id, user_id, role) VALUES ($1, $2, 'admin')", tenant_id, user
        )
    return tenant_id


async def retire_tenant_on_shard(pool: asyncpg.Pool, shard_dsn: str, tenant_id: uuid.UUID) -> None:
    """seed_tenant_on_shard undone: its schema dropped, its row DELETED (no later scenario meets it)."""
    shard_conn = await asyncpg.connect(shard_dsn)
    try:
        await shard_conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(schema_name_for(tenant_id))} CASCADE")
    finally:
        await shard_conn.close()
    async with pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET state = 'DELETED' WHERE id = $1", tenant_id)


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

"""Issue 14: every database wait is bounded, and provisioning survives a lock
holder that never answers and a worker killed in the middle of its DDL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.service import RPCError

from provisioner_worker.lock_waits import log as lock_waits_log
from provisioner_worker.worker import build_worker
from tenant_api.interceptors.error_mapping import _database_error
from tenantry.db.engine import create_engine, session_settings
from tenantry.db.models import TenantBase
from tenantry.db.timeouts import bound_lock_waits, is_lock_timeout
from tenantry.migrations import tenant_head_revision
from tenantry.schema_names import is_tenant_schema_name, schema_name_for
from tenantry.settings import DbTimeouts
from tenantry.states import TenantEventType
from tenantry.v1 import operation_pb2, tenant_pb2, tenant_service_pb2
from tenantry.workflow_contract import provision_workflow_id, reconcile_schedule_id
from tests.stack import (
    ServiceProcess,
    eventually,
    registration,
    running_stack,
    schema_exists,
    schema_step,
    service_env,
    spawn,
    spawn_command,
    stopping,
    wait_done,
)

# A worker process frozen while it holds a tenant's row lock in an open
# transaction: its session is made exactly as the services make theirs (the
# worker's settings, create_engine), then the test SIGSTOPs it.
_FROZEN_HOLDER = """
import asyncio, sys
from sqlalchemy import text
from tenantry.db.engine import create_engine
from tenantry.settings import WorkerSettings

async def main() -> None:
    settings = WorkerSettings.from_env()
    engine = create_engine(settings.database_url, pool_size=1, max_overflow=0, timeouts=settings.db_timeouts)
    conn = await engine.connect()
    await conn.begin()
    pid = await conn.scalar(text("SELECT pg_backend_pid()"))
    await conn.execute(text("SELECT 1 FROM tenants WHERE id = CAST(:id AS uuid) FOR UPDATE"), {"id": sys.argv[1]})
    print(f"LOCKED {pid}", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""
# Long enough for the in-process worker to start and run out of lock waits
# (1 s each) inside it; short enough for a test.
HOLDER_IDLE_TIMEOUT_SECONDS = 8


def _env(database_url: str, temporal_client: Client, queue: str, logs: Path, **extra: str) -> dict[str, str]:
    return service_env(
        database_url,
        temporal_client.service_client.config.target_host,
        queue,
        TENANTRY_RECONCILE_INTERVAL_SECONDS="3600",
        TENANTRY_WORKER_LIVENESS_FILE=str(logs / f"alive-{uuid.uuid4().hex[:6]}"),
        **extra,
    )


async def _backend_alive(engine: AsyncEngine, pid: int) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}))


async def _event_types(engine: AsyncEngine, tenant_id: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT type FROM tenant_events WHERE tenant_id = CAST(:id AS uuid) ORDER BY sequence"),
            {"id": tenant_id},
        )
        return [str(row.type) for row in rows]


async def _tenant_schemas(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        names = (await conn.execute(text("SELECT nspname FROM pg_catalog.pg_namespace"))).scalars()
        return {name for name in names if is_tenant_schema_name(name)}


@contextlib.asynccontextmanager
async def _own_engine(database_url: str, timeouts: DbTimeouts) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, timeouts=timeouts)
    try:
        yield engine
    finally:
        await engine.dispose()


# --- the bounds themselves ---------------------------------------------------------


async def test_every_session_starts_bounded(database_url: str) -> None:
    timeouts = DbTimeouts(statement_seconds=12, lock_seconds=0.25, idle_in_transaction_seconds=7)
    async with _own_engine(database_url, timeouts) as engine, engine.connect() as conn:
        shown = {
            name: await conn.scalar(text(f"SELECT current_setting('{name}')"))
            for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        }
        assert shown == {
            "statement_timeout": "12s",
            "lock_timeout": "250ms",
            "idle_in_transaction_session_timeout": "7s",
        }
    # Keepalives apply on TCP only (the tests' server is on a Unix socket, where
    # PostgreSQL reads them as 0): what every session asks for.
    settings = session_settings(timeouts)
    assert {k: settings[k] for k in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")} == {
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
    }
    assert settings["tcp_user_timeout"] == "60000"
    # The worker's sessions also poll their client's socket while a statement runs.
    assert "client_connection_check_interval" not in settings
    worker = session_settings(timeouts, check_client_connection=True)
    assert worker == {**settings, "client_connection_check_interval": "2000"}
    # A sub-millisecond bound is 1 ms, never 0 ("no limit").
    assert session_settings(DbTimeouts(0.0001, 0.0001, 0.0001))["lock_timeout"] == "1"


async def test_a_step_lock_wait_ends_with_lock_not_available(database_url: str, engine: AsyncEngine) -> None:
    """The per-step bound: a transaction waiting for a held lock gives up after
    the engine's lock timeout with 55P03, which the worker recognises."""
    key = uuid.uuid4().int % 2**62
    async with _own_engine(database_url, DbTimeouts(lock_seconds=0.3)) as bounded, engine.connect() as holder:
        await holder.begin()
        await holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DBAPIError) as raised:
            async with bounded.begin() as conn:
                await bound_lock_waits(conn)
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        assert is_lock_timeout(raised.value), raised.value
        assert 0.25 <= loop.time() - started < 5
        await holder.rollback()


# --- a frozen lock holder ----------------------------------------------------------


async def test_provisioning_outlasts_a_frozen_lock_holder(
    database_url: str, engine: AsyncEngine, temporal_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A process holding the tenant's row lock is frozen (SIGSTOP) and never
    answers again: the server ends its session after
    idle_in_transaction_session_timeout, the worker's step, whose lock waits
    meanwhile ran out again and again, runs again and provisions the tenant,
    in its first Temporal attempt; the tenant is never FAILED."""
    caplog.set_level(logging.WARNING, logger=lock_waits_log.name)
    queue = f"wedge-{uuid.uuid4().hex[:8]}"
    logs = Path(tempfile.mkdtemp(prefix="tenantry-wedge-"))
    async with running_stack(engine=engine, client=temporal_client, task_queue=queue, with_worker=False) as stack:
        response = await stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
        tenant_id = response.tenant.id
        env = _env(
            database_url,
            temporal_client,
            queue,
            logs,
            TENANTRY_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS=str(HOLDER_IDLE_TIMEOUT_SECONDS),
        )
        holder = spawn_command("frozen-holder", [sys.executable, "-c", _FROZEN_HOLDER, tenant_id], env, logs)
        with stopping(holder):

            async def locked() -> int | None:
                holder.check_alive()
                for line in holder.log_tail().splitlines():
                    if line.startswith("LOCKED "):
                        return int(line.split()[1])
                return None

            holder_backend = await eventually(locked, timeout=30)
            os.kill(holder.pid, signal.SIGSTOP)
            loop = asyncio.get_running_loop()
            frozen_at = loop.time()

            # The worker waits at most 1 s for any lock, far less than the holder keeps it.
            async with (
                _own_engine(database_url, DbTimeouts(lock_seconds=1)) as worker_engine,
                build_worker(temporal_client, worker_engine, queue),
            ):
                operation = await wait_done(stack.stubs, response.operation.name, timeout=60)
            waited = loop.time() - frozen_at

            assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
            # The holder is still frozen; the server ended its session.
            assert holder.alive()
            await eventually(lambda: _gone(engine, holder_backend), timeout=10)
            assert waited >= HOLDER_IDLE_TIMEOUT_SECONDS - 1.5, waited

        got = await stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id), timeout=10)
        assert got.tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
        assert TenantEventType.PROVISIONING_FAILED not in await _event_types(engine, tenant_id)
        # Lock waits ran out inside the one Temporal attempt, and were run again.
        gave_up = [r for r in caplog.records if r.name == lock_waits_log.name and "gave up waiting" in r.message]
        assert gave_up, [r.message for r in caplog.records]
        step = await schema_step(temporal_client, provision_workflow_id(uuid.UUID(tenant_id)))
        assert step.attempt == 1, step


# --- a worker killed mid-DDL -------------------------------------------------------


async def _blocked_activation(engine: AsyncEngine) -> tuple[int, bool] | None:
    """(backend pid, has a transaction id) of a session waiting to write
    tenant_memberships: a provisioning step past its DDL, at its activation."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    """
                    SELECT a.pid, a.backend_xid IS NOT NULL AS wrote
                    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE NOT l.granted AND l.relation = 'tenant_memberships'::regclass
                    """
                )
            )
        ).first()
        return (int(row.pid), bool(row.wrote)) if row is not None else None


async def test_worker_killed_mid_ddl_leaves_one_complete_schema(
    database_url: str, engine: AsyncEngine, temporal_client: Client
) -> None:
    """The worker process is SIGKILLed after its step ran CREATE SCHEMA and the
    tenant tables but before the commit (its activation is held on a lock on
    tenant_memberships): nothing of the schema survives, and a new worker's
    retry leaves exactly one complete schema at head and an ACTIVE tenant."""
    queue = f"wedge-kill-{uuid.uuid4().hex[:8]}"
    logs = Path(tempfile.mkdtemp(prefix="tenantry-wedge-"))
    # The worker waits for the held table rather than retrying meanwhile.
    env = _env(database_url, temporal_client, queue, logs, TENANTRY_DB_LOCK_TIMEOUT_SECONDS="60")
    schemas_before = await _tenant_schemas(engine)
    worker_a = spawn("worker-a", "provisioner_worker", env, logs)
    worker_b: ServiceProcess | None = None
    try:
        async with (
            running_stack(engine=engine, client=temporal_client, task_queue=queue, with_worker=False) as stack,
            # The test's own holder may sit idle in its transaction for a while.
            _own_engine(database_url, DbTimeouts(idle_in_transaction_seconds=300)) as holder_engine,
        ):
            with stopping(worker_a):
                async with holder_engine.connect() as holder:
                    await holder.begin()
                    await holder.execute(text("LOCK TABLE tenant_memberships IN SHARE MODE"))
                    response = await stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
                    tenant_id = uuid.UUID(response.tenant.id)
                    schema = schema_name_for(tenant_id)

                    async def blocked() -> tuple[int, bool] | None:
                        worker_a.check_alive()
                        return await _blocked_activation(engine)

                    backend, wrote = await eventually(blocked, timeout=60)
                    assert wrote, "the blocked step has not written anything yet"
                    assert worker_a.stop(signal.SIGKILL) == -signal.SIGKILL
                    # Its backend, still waiting for the lock, polls the socket
                    # (client_connection_check_interval), finds it closed and
                    # ends the session: the transaction rolls back.
                    await eventually(lambda: _gone(engine, backend), timeout=15)
                    assert not await schema_exists(engine, schema)
                    await holder.rollback()

            worker_b = spawn("worker-b", "provisioner_worker", env, logs)
            with stopping(worker_b):
                operation = await wait_done(stack.stubs, response.operation.name, timeout=90)
                assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
                step = await schema_step(temporal_client, provision_workflow_id(tenant_id))
                assert step.attempt >= 2 and step.completed_by == worker_b.identity, step
            got = await stack.stubs.tenants.GetTenant(
                tenant_service_pb2.GetTenantRequest(tenant_id=str(tenant_id)), timeout=10
            )
            assert got.tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
    finally:
        with contextlib.suppress(RPCError):
            await temporal_client.get_schedule_handle(reconcile_schedule_id(queue)).delete()

    head = tenant_head_revision()
    assert await _tenant_schemas(engine) - schemas_before == {schema}
    async with engine.connect() as conn:
        tables = set(
            (
                await conn.execute(
                    text("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = :s"), {"s": schema}
                )
            ).scalars()
        )
        assert tables == {table.name for table in TenantBase.metadata.tables.values()} | {"alembic_version"}
        stamped = (await conn.execute(text(f'SELECT version_num FROM "{schema}".alembic_version'))).scalars().all()
        assert stamped == [head]
        recorded = await conn.scalar(
            text("SELECT schema_version FROM tenants WHERE id = CAST(:id AS uuid)"), {"id": str(tenant_id)}
        )
        assert recorded == head
        admins = await conn.scalar(
            text("SELECT count(*) FROM tenant_memberships WHERE tenant_id = CAST(:id AS uuid)"), {"id": str(tenant_id)}
        )
        assert admins == 1
    assert TenantEventType.PROVISIONING_FAILED not in await _event_types(engine, str(tenant_id))


async def _gone(engine: AsyncEngine, pid: int) -> bool:
    return not await _backend_alive(engine, pid)


async def test_a_session_ended_for_idling_in_its_transaction_is_unavailable(database_url: str) -> None:
    """What a client whose transaction sat idle past the bound gets next: an
    error the API maps to UNAVAILABLE (retry), never INTERNAL."""
    async with _own_engine(database_url, DbTimeouts(idle_in_transaction_seconds=0.2)) as bounded:
        with pytest.raises(DBAPIError) as raised:
            async with bounded.connect() as conn:
                await conn.begin()
                await conn.execute(text("SELECT 1"))
                await asyncio.sleep(1)
                await conn.execute(text("SELECT 1"))
    mapped = _database_error(raised.value)
    assert mapped is not None and mapped.code == grpc.StatusCode.UNAVAILABLE, (raised.value, mapped)

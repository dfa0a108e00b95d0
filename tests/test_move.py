"""MoveTenant (issue 15): a tenant's schema moved between two real embedded
PostgreSQL servers (the control plane's `default` and the `b` of
`shard_b_urls`) under a concurrent read/write load, back again, with a worker
killed inside each step, and the calls MoveTenant refuses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from provisioner_worker.move import (
    CHECKPOINT_BULK_COPY,
    CHECKPOINT_SWITCH_MOVING,
    CHECKPOINT_SWITCH_RENAMED,
    MOVE_CHECKPOINT_KEY,
    MOVE_REFUSED,
    AbortMoveInput,
    MoveActivities,
    MoveOutcome,
    _checksums,
    _pin_text_output,
    _table_shapes,
    checkpoint_name,
    tombstone_name,
)
from tenantry.db import operations as operation_sql
from tenantry.db.engine import driver_of
from tenantry.db.shards import Shards
from tenantry.migrations import tenant_schema_script
from tenantry.schema_names import schema_name_for
from tenantry.states import OperationKind
from tenantry.v1 import (
    operation_pb2,
    project_service_pb2,
    tenant_pb2,
    tenant_service_pb2,
)
from tenantry.workflow_contract import MoveTenantInput, new_workflow_id, reconcile_schedule_id
from tenantry_dev.embedded import DatabaseUrls
from tests.stack import (
    Stack,
    Stubs,
    api_channel,
    by_id,
    error_info,
    eventually,
    expect_error,
    expect_invalid_field,
    registration,
    replay_and_record,
    running_stack,
    schema_exists,
    service_env,
    shards_with_default,
    spawn,
    stopping,
    stubs_for,
    token,
    wait_done,
)

OPERATION_PREFIX = "operations/"


@pytest.fixture(scope="module")
async def api_shards(
    api_engine: AsyncEngine, database_urls: DatabaseUrls, shard_b_urls: DatabaseUrls
) -> AsyncIterator[Shards]:
    shards = shards_with_default(api_engine, database_urls.api, b=shard_b_urls.api)
    yield shards
    await shards.dispose()


@pytest.fixture(scope="module")
async def worker_shards(
    worker_engine: AsyncEngine, database_urls: DatabaseUrls, shard_b_urls: DatabaseUrls
) -> AsyncIterator[Shards]:
    shards = shards_with_default(worker_engine, database_urls.worker, b=shard_b_urls.worker)
    yield shards
    await shards.dispose()


@pytest.fixture(scope="module")
async def move_stack(
    api_engine: AsyncEngine,
    worker_engine: AsyncEngine,
    temporal_client: Client,
    api_shards: Shards,
    worker_shards: Shards,
) -> AsyncIterator[Stack]:
    """API and worker (each as its role) with the shards default and b."""
    async with running_stack(
        engine=api_engine,
        worker_engine=worker_engine,
        client=temporal_client,
        shards=api_shards,
        worker_shards=worker_shards,
    ) as stack:
        yield stack


async def _tenant_on_default(stubs: Stubs, projects: int, engine: AsyncEngine) -> tenant_pb2.Tenant:
    """An ACTIVE tenant on the default shard with `projects` rows (written
    directly by the superuser: the load comes later)."""
    response = await stubs.tenants.RegisterTenant(registration(shard="default"), timeout=30)
    operation = await wait_done(stubs, response.operation.name, timeout=90)
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
    schema = schema_name_for(uuid.UUID(response.tenant.id))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f'INSERT INTO "{schema}".projects (id, name, description) '
                "SELECT gen_random_uuid(), 'seed-' || g, repeat('x', g % 50) FROM generate_series(1, :n) g"
            ),
            {"n": projects},
        )
    got = await stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id), timeout=10)
    assert got.tenant.shard == "default"
    return got.tenant


async def _project_ids(engine: AsyncEngine, schema: str) -> list[str]:
    async with engine.connect() as conn:
        return [str(i) for i in (await conn.execute(text(f'SELECT id FROM "{schema}".projects'))).scalars()]


async def _placement(engine: AsyncEngine, tenant_id: str) -> tuple[str, bool]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT shard, moving FROM tenants WHERE id = CAST(:id AS uuid)"), {"id": tenant_id}
            )
        ).one()
    return row.shard, row.moving


async def _moved_events(engine: AsyncEngine, tenant_id: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                text("SELECT count(*) FROM tenant_events WHERE tenant_id = CAST(:id AS uuid) AND type = 'MOVED'"),
                {"id": tenant_id},
            )
        )


async def _move(stubs: Stubs, tenant_id: str, target: str) -> tenant_service_pb2.MoveTenantResponse:
    response = await stubs.tenants.MoveTenant(
        tenant_service_pb2.MoveTenantRequest(tenant_id=tenant_id, target_shard=target), timeout=30
    )
    assert response.operation.kind == operation_pb2.OPERATION_KIND_MOVE
    assert response.operation.state == operation_pb2.OPERATION_STATE_PENDING
    return response


# --- a move under load --------------------------------------------------------------


@dataclass
class Outcome:
    start: float
    end: float
    code: grpc.StatusCode
    reason: str = ""
    retry_info: bool = False


def _outcome(start: float, error: grpc.aio.AioRpcError | None) -> Outcome:
    end = time.time()
    if error is None:
        return Outcome(start, end, grpc.StatusCode.OK)
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    retry = status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    return Outcome(start, end, error.code(), error_info(error).reason, retry)


@dataclass
class Load:
    acknowledged: list[str]
    outcomes: list[Outcome]
    stop: asyncio.Event
    prefix: str = ""


async def _writer(stubs: Stubs, tenant_id: str, worker: int, load: Load) -> None:
    metadata = by_id(tenant_id)
    for k in range(100_000):
        if load.stop.is_set():
            return
        start = time.time()
        try:
            response = await stubs.projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name=f"{load.prefix}w{worker}-{k}"),
                metadata=metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as error:
            load.outcomes.append(_outcome(start, error))
            await asyncio.sleep(0.05)
            continue
        load.outcomes.append(_outcome(start, None))
        load.acknowledged.append(response.project.id)


async def _reader(stubs: Stubs, tenant_id: str, load: Load) -> None:
    metadata = by_id(tenant_id)
    while not load.stop.is_set():
        start = time.time()
        try:
            if load.acknowledged and random.random() < 0.7:
                project_id = random.choice(load.acknowledged)
                got = await stubs.projects.GetProject(
                    project_service_pb2.GetProjectRequest(project_id=project_id), metadata=metadata, timeout=30
                )
                assert got.project.id == project_id
            else:
                await stubs.projects.ListProjects(
                    project_service_pb2.ListProjectsRequest(page_size=50), metadata=metadata, timeout=30
                )
        except grpc.aio.AioRpcError as error:
            load.outcomes.append(_outcome(start, error))
            await asyncio.sleep(0.05)
            continue
        load.outcomes.append(_outcome(start, None))


async def _move_under_load(
    stack: Stack, client: Client, tenant_id: str, target: str
) -> tuple[Load, MoveOutcome, operation_pb2.Operation]:
    load = Load([], [], asyncio.Event(), uuid.uuid4().hex[:6])
    tasks = [asyncio.create_task(_writer(stack.stubs, tenant_id, i, load)) for i in range(3)]
    tasks += [asyncio.create_task(_reader(stack.stubs, tenant_id, load)) for _ in range(2)]
    try:
        await eventually(lambda: _true(len(load.acknowledged) >= 30), timeout=30)
        response = await _move(stack.stubs, tenant_id, target)
        operation = await wait_done(stack.stubs, response.operation.name, timeout=120)
        moved = len(load.acknowledged)
        # The load goes on against the new copy for a moment.
        await eventually(lambda: _true(len(load.acknowledged) >= moved + 30), timeout=30)
    finally:
        load.stop.set()
        await asyncio.gather(*tasks)
    workflow_id = response.operation.name.removeprefix(OPERATION_PREFIX)
    outcome = await client.get_workflow_handle(workflow_id, result_type=MoveOutcome).result()
    return load, outcome, operation


async def _true(value: bool) -> bool:
    return value


def _check_load(load: Load, outcome: MoveOutcome) -> None:
    bad = [o for o in load.outcomes if o.code != grpc.StatusCode.OK and o.reason != "TENANT_MOVING"]
    assert not bad, bad[:5]
    moving = [o for o in load.outcomes if o.reason == "TENANT_MOVING"]
    for o in moving:
        assert o.code == grpc.StatusCode.UNAVAILABLE and o.retry_info, o
        # Only during the switch: the call overlapped the window.
        assert o.start <= outcome.window_end + 0.05 and o.end >= outcome.window_start - 0.05, (o, outcome)
    assert sum(o.code == grpc.StatusCode.OK for o in load.outcomes) > 60


async def _admits(shard: AsyncEngine, tenant_id: str) -> bool:
    """The shard's admission row admits the tenant (tenantry.db.admission)."""
    async with shard.connect() as conn:
        admit = await conn.scalar(
            text("SELECT admit FROM tenant_admission WHERE tenant_id = :id"), {"id": uuid.UUID(tenant_id)}
        )
    return bool(admit)


async def test_a_tenant_moves_to_b_and_back_under_load_losing_nothing(
    move_stack: Stack, temporal_client: Client, engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    tenant = await _tenant_on_default(move_stack.stubs, 3000, engine)
    schema = schema_name_for(uuid.UUID(tenant.id))
    seeded = set(await _project_ids(engine, schema))
    assert len(seeded) == 3000

    load, outcome, operation = await _move_under_load(move_stack, temporal_client, tenant.id, "b")
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
    assert outcome.state == "SUCCEEDED" and outcome.rows >= 3000, outcome
    assert outcome.window_seconds < 5, outcome
    await replay_and_record(temporal_client, operation.name.removeprefix(OPERATION_PREFIX), "move-succeeded")
    _check_load(load, outcome)
    on_b = await _project_ids(b_admin, schema)
    assert len(on_b) == len(set(on_b)) == len(seeded) + len(load.acknowledged)
    assert set(on_b) == seeded | set(load.acknowledged)
    assert not await schema_exists(engine, schema)
    assert not await schema_exists(engine, tombstone_name(schema))
    assert await _placement(engine, tenant.id) == ("b", False)
    got = await move_stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=tenant.id), timeout=10)
    assert got.tenant.shard == "b" and got.tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert await _moved_events(engine, tenant.id) == 1
    # Every acknowledged write is readable through the API on b.
    for project_id in random.sample(load.acknowledged, 20):
        await move_stack.stubs.projects.GetProject(
            project_service_pb2.GetProjectRequest(project_id=project_id), metadata=by_id(tenant.id), timeout=10
        )

    # b admits it by its own row now (the gate recorded the control plane's admission there).
    assert await eventually(functools.partial(_admits, b_admin, tenant.id), timeout=10)

    # And back to the control plane's database: b's row fenced by the switch.
    back, outcome_back, operation_back = await _move_under_load(move_stack, temporal_client, tenant.id, "default")
    assert operation_back.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation_back
    _check_load(back, outcome_back)
    on_default = await _project_ids(engine, schema)
    assert len(on_default) == len(set(on_default))
    assert set(on_default) == seeded | set(load.acknowledged) | set(back.acknowledged)
    assert not await schema_exists(b_admin, schema)
    assert not await schema_exists(b_admin, tombstone_name(schema))
    assert await _placement(engine, tenant.id) == ("default", False)
    assert await _moved_events(engine, tenant.id) == 2
    assert not await _admits(b_admin, tenant.id)


# --- refusals -----------------------------------------------------------------------


async def test_move_refusals(
    move_stack: Stack,
    api_engine: AsyncEngine,
    temporal_client: Client,
    api_shards: Shards,
    engine: AsyncEngine,
) -> None:
    tenant = await _tenant_on_default(move_stack.stubs, 0, engine)
    tenants = move_stack.stubs.tenants

    def move(target: str, **fields: str) -> Awaitable[tenant_service_pb2.MoveTenantResponse]:
        return tenants.MoveTenant(
            tenant_service_pb2.MoveTenantRequest(
                tenant_id=fields.pop("tenant_id", tenant.id), target_shard=target, **fields
            ),
            timeout=10,
        )

    # tenants.move is its own permission: tenants.update is not enough.
    async with api_channel(f"127.0.0.1:{move_stack.api.port}", token=token("tenants.get tenants.update")) as channel:
        error = await expect_error(
            stubs_for(channel).tenants.MoveTenant(
                tenant_service_pb2.MoveTenantRequest(tenant_id=tenant.id, target_shard="b"), timeout=10
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_MISSING",
        )
        assert error_info(error).metadata["permission"] == "tenants.move"
    await expect_invalid_field(move("B!"), "target_shard")
    await expect_invalid_field(move("nowhere"), "target_shard")
    await expect_invalid_field(move("b", tenant_id="nope"), "tenant_id")
    await expect_error(move("b", tenant_id=str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")
    await expect_error(move("default"), grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_ON_SHARD")
    await expect_error(move("b", etag='W/"nope"'), grpc.StatusCode.ABORTED, "ETAG_MISMATCH")

    # An open move (on an API whose task queue has no worker: it stays PENDING).
    async with running_stack(engine=api_engine, client=temporal_client, with_worker=False, shards=api_shards) as idle:
        request_id = str(uuid.uuid4())
        first = await idle.stubs.tenants.MoveTenant(
            tenant_service_pb2.MoveTenantRequest(tenant_id=tenant.id, target_shard="b", request_id=request_id),
            timeout=10,
        )
        assert first.operation.state == operation_pb2.OPERATION_STATE_PENDING
        replay = await idle.stubs.tenants.MoveTenant(
            tenant_service_pb2.MoveTenantRequest(tenant_id=tenant.id, target_shard="b", request_id=request_id),
            timeout=10,
        )
        assert replay.operation.name == first.operation.name
        error = await expect_error(
            idle.stubs.tenants.MoveTenant(
                tenant_service_pb2.MoveTenantRequest(tenant_id=tenant.id, target_shard="b"), timeout=10
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "OPERATION_IN_PROGRESS",
        )
        assert error_info(error).metadata["operation"] == first.operation.name
        await expect_error(
            idle.stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id), timeout=10),
            grpc.StatusCode.FAILED_PRECONDITION,
            "OPERATION_IN_PROGRESS",
        )
        # A request_id of a move is not a deletion's.
        await expect_invalid_field(
            idle.stubs.tenants.DeleteTenant(
                tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id, request_id=request_id), timeout=10
            ),
            "request_id",
        )
        # Suspend and resume go on while a move is open.
        await idle.stubs.tenants.SuspendTenant(
            tenant_service_pb2.SuspendTenantRequest(tenant_id=tenant.id, reason="billing"), timeout=10
        )
        await idle.stubs.tenants.ResumeTenant(tenant_service_pb2.ResumeTenantRequest(tenant_id=tenant.id), timeout=10)
        workflow_id = first.operation.name.removeprefix(OPERATION_PREFIX)
    # The move's workflow runs on the stack with a worker now: it moves the tenant.
    await temporal_client.get_workflow_handle(workflow_id).terminate("test: restarted on the worker's queue")
    await temporal_client.start_workflow(
        "TenantMoveWorkflow",
        {"tenant_id": tenant.id, "source_shard": "default", "target_shard": "b"},
        id=workflow_id,
        task_queue=move_stack.task_queue,
    )
    done = await wait_done(move_stack.stubs, first.operation.name, timeout=90)
    assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED, done
    assert await _placement(engine, tenant.id) == ("b", False)

    # Not ACTIVE or SUSPENDED: a deleted (retained) tenant is not moved.
    await tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id), timeout=10)
    await expect_error(move("default"), grpc.StatusCode.FAILED_PRECONDITION, "WRONG_TENANT_STATE")


# --- a worker killed inside each step -----------------------------------------------


async def _hold(conn: object, name: str) -> None:
    await conn.execute(  # type: ignore[attr-defined]
        text("SELECT pg_advisory_lock(:key, hashtext(:name))"), {"key": MOVE_CHECKPOINT_KEY, "name": name}
    )


async def _waiting_at_checkpoint(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid = CAST(:key AS oid)"
            ),
            {"key": MOVE_CHECKPOINT_KEY},
        )
    return bool(waiting)


@pytest.mark.parametrize(
    ("checkpoint", "restarted"),
    [
        (CHECKPOINT_BULK_COPY, False),
        (CHECKPOINT_SWITCH_MOVING, False),
        (CHECKPOINT_SWITCH_RENAMED, False),
        (CHECKPOINT_SWITCH_MOVING, True),
        (CHECKPOINT_SWITCH_RENAMED, True),
    ],
)
async def test_a_worker_killed_inside_a_move_step_is_resumed_by_another(
    checkpoint: str,
    restarted: bool,
    database_urls: DatabaseUrls,
    shard_b_urls: DatabaseUrls,
    api_engine: AsyncEngine,
    api_shards: Shards,
    engine: AsyncEngine,
    b_admin: AsyncEngine,
    temporal_client: Client,
) -> None:
    """The move's worker process is SIGKILLed while the step is held at its
    checkpoint (a shared advisory lock the test holds exclusively); another
    worker process resumes: the tenant ends on b exactly once, every row
    there, no copy left on the default shard. `restarted`: the workflow is
    lost too and a new run of it starts from its first step (as the
    reconciler restarts a RUNNING operation whose workflow is gone): it
    finds the earlier run's state (moving set; the source renamed) and
    finishes from there."""
    queue = f"move-kill-{uuid.uuid4().hex[:8]}"
    logs = Path(tempfile.mkdtemp(prefix="tenantry-move-"))
    env = service_env(
        database_urls.worker,
        temporal_client.service_client.config.target_host,
        queue,
        TENANTRY_SHARDS=json.dumps({"b": shard_b_urls.worker}),
        TENANTRY_RECONCILE_INTERVAL_SECONDS="3600",
        TENANTRY_WORKER_LIVENESS_FILE=str(logs / "alive"),
    )
    worker_a = spawn("worker-a", "provisioner_worker", env, logs)
    try:
        async with running_stack(
            engine=api_engine, client=temporal_client, task_queue=queue, with_worker=False, shards=api_shards
        ) as stack:
            with stopping(worker_a):
                tenant = await _tenant_on_default(stack.stubs, 2000, engine)
                schema = schema_name_for(uuid.UUID(tenant.id))
                seeded = set(await _project_ids(engine, schema))
                async with engine.connect() as holder:
                    await _hold(holder, checkpoint_name(uuid.UUID(tenant.id), checkpoint))
                    await holder.commit()
                    response = await _move(stack.stubs, tenant.id, "b")

                    async def held() -> bool:
                        worker_a.check_alive()
                        return await _waiting_at_checkpoint(engine)

                    await eventually(held, timeout=60)
                    shard, moving = await _placement(engine, tenant.id)
                    assert shard == "default"
                    assert moving == (checkpoint != CHECKPOINT_BULK_COPY)
                    if checkpoint == CHECKPOINT_SWITCH_RENAMED:
                        assert await schema_exists(engine, tombstone_name(schema))
                        assert not await schema_exists(engine, schema)
                    worker_a.stop(signal.SIGKILL)
                    await holder.execute(
                        text("SELECT pg_advisory_unlock(:key, hashtext(:name))"),
                        {"key": MOVE_CHECKPOINT_KEY, "name": checkpoint_name(uuid.UUID(tenant.id), checkpoint)},
                    )
                    await holder.commit()
            if restarted:
                workflow_id = response.operation.name.removeprefix(OPERATION_PREFIX)
                await temporal_client.get_workflow_handle(workflow_id).terminate("test: the workflow is lost")
                await temporal_client.start_workflow(
                    "TenantMoveWorkflow",
                    MoveTenantInput(tenant.id, "default", "b"),
                    id=workflow_id,
                    task_queue=queue,
                )
            worker_b = spawn("worker-b", "provisioner_worker", env, logs)
            with stopping(worker_b):
                operation = await wait_done(stack.stubs, response.operation.name, timeout=150)
                assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
                # Writes reach the new copy.
                created = await stack.stubs.projects.CreateProject(
                    project_service_pb2.CreateProjectRequest(name="after-the-move"),
                    metadata=by_id(tenant.id),
                    timeout=10,
                )
    finally:
        with contextlib.suppress(RPCError):
            await temporal_client.get_schedule_handle(reconcile_schedule_id(queue)).delete()
    assert await _placement(engine, tenant.id) == ("b", False)
    on_b = await _project_ids(b_admin, schema)
    assert len(on_b) == len(set(on_b))
    assert set(on_b) == seeded | {created.project.id}
    assert not await schema_exists(engine, schema)
    assert not await schema_exists(engine, tombstone_name(schema))
    assert await _moved_events(engine, tenant.id) == 1


# --- a move that cannot verify rolls back ---------------------------------------------


async def test_a_move_whose_source_changed_schema_rolls_back_and_the_source_serves(
    move_stack: Stack, engine: AsyncEngine, b_admin: AsyncEngine, temporal_client: Client
) -> None:
    """The source schema changes revision while the bulk copy is held (as a
    fleet rollout would): the switch's check under the lock refuses, the move
    rolls back (target copy dropped, moving = false, operation FAILED with
    SCHEMA_CHANGED) and the tenant serves from the source, every row there."""
    tenant = await _tenant_on_default(move_stack.stubs, 500, engine)
    tenant_id = uuid.UUID(tenant.id)
    schema = schema_name_for(tenant_id)
    seeded = set(await _project_ids(engine, schema))
    async with engine.connect() as holder:
        await _hold(holder, checkpoint_name(tenant_id, CHECKPOINT_BULK_COPY))
        await holder.commit()
        response = await _move(move_stack.stubs, tenant.id, "b")
        await eventually(lambda: _waiting_at_checkpoint(engine), timeout=60)
        async with engine.begin() as conn:
            revision = await conn.scalar(text(f'SELECT version_num FROM "{schema}".alembic_version'))
            await conn.execute(text(f"UPDATE \"{schema}\".alembic_version SET version_num = 'zzzz'"))
        await holder.execute(
            text("SELECT pg_advisory_unlock(:key, hashtext(:name))"),
            {"key": MOVE_CHECKPOINT_KEY, "name": checkpoint_name(tenant_id, CHECKPOINT_BULK_COPY)},
        )
        await holder.commit()
    operation = await wait_done(move_stack.stubs, response.operation.name, timeout=90)
    assert operation.state == operation_pb2.OPERATION_STATE_FAILED, operation
    assert operation.error_message.startswith("SCHEMA_CHANGED: "), operation.error_message
    await replay_and_record(temporal_client, operation.name.removeprefix(OPERATION_PREFIX), "move-rolled-back")
    assert await _placement(engine, tenant.id) == ("default", False)
    assert not await schema_exists(b_admin, schema)
    assert set(await _project_ids(engine, schema)) == seeded
    assert await _moved_events(engine, tenant.id) == 0
    async with engine.begin() as conn:
        await conn.execute(text(f'UPDATE "{schema}".alembic_version SET version_num = :r'), {"r": revision})
    created = await move_stack.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="still-here"), metadata=by_id(tenant.id), timeout=10
    )
    # A new move goes through.
    again = await _move(move_stack.stubs, tenant.id, "b")
    done = await wait_done(move_stack.stubs, again.operation.name, timeout=90)
    assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED, done
    assert set(await _project_ids(b_admin, schema)) == seeded | {created.project.id}


async def _rows(engine: AsyncEngine, schema: str) -> set[tuple[str, str, str, bool]]:
    async with engine.connect() as conn:
        result = await conn.execute(text(f'SELECT id::text, name, description, archived FROM "{schema}".projects'))
        return {(r[0], r[1], r[2], r[3]) for r in result}


async def test_updates_deletes_and_inserts_made_during_the_bulk_copy_are_caught_up_by_the_switch(
    move_stack: Stack, engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    """Rows updated, deleted and inserted on the source after the bulk copy
    read it (held at its checkpoint): the switch finds the table differs,
    copies the rows that differ and verifies; b ends with exactly the
    source's final rows."""
    tenant = await _tenant_on_default(move_stack.stubs, 2000, engine)
    tenant_id = uuid.UUID(tenant.id)
    schema = schema_name_for(tenant_id)
    async with engine.connect() as holder:
        await _hold(holder, checkpoint_name(tenant_id, CHECKPOINT_BULK_COPY))
        await holder.commit()
        response = await _move(move_stack.stubs, tenant.id, "b")
        await eventually(lambda: _waiting_at_checkpoint(engine), timeout=60)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    f"UPDATE \"{schema}\".projects SET description = 'changed', archived = true "
                    "WHERE name LIKE 'seed-1%'"
                )
            )
            await conn.execute(text(f"DELETE FROM \"{schema}\".projects WHERE name LIKE 'seed-2%'"))
            await conn.execute(
                text(
                    f'INSERT INTO "{schema}".projects (id, name) '
                    "SELECT gen_random_uuid(), 'late-' || g FROM generate_series(1, 50) g"
                )
            )
        final = await _rows(engine, schema)
        await holder.execute(
            text("SELECT pg_advisory_unlock(:key, hashtext(:name))"),
            {"key": MOVE_CHECKPOINT_KEY, "name": checkpoint_name(tenant_id, CHECKPOINT_BULK_COPY)},
        )
        await holder.commit()
    operation = await wait_done(move_stack.stubs, response.operation.name, timeout=90)
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
    assert await _rows(b_admin, schema) == final
    # seed-2, seed-20..29, seed-200..299, seed-2000 deleted.
    assert len(final) == 2000 - 112 + 50
    # The catch-up's scratch table lived only inside the target's transaction.
    async with b_admin.connect() as conn:
        assert await conn.scalar(text("SELECT to_regclass(:t)"), {"t": f'"{schema}"._move_delta'}) is None


def test_the_move_benchmark_runs(tmp_path: Path) -> None:
    """`python -m bench.move --smoke` (part of `make bench`): two servers of
    its own, every measurement reported, the moved rows all there."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.move", "--smoke", "--output", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    results = json.loads((tmp_path / "move.json").read_text())
    (move,) = results["moves"]
    assert move["rows"] == 1000 and move["move_rows_per_s"] > 0 and move["floor_rows_per_s"] > 0
    assert move["ratio"] > 0 and 0 < move["window_s"] < 10
    assert [w["load"] for w in results["windows"]] == ["idle", "writers"]
    assert all(0 < w["window_s"] < 10 for w in results["windows"])
    assert (tmp_path / "move.md").read_text().startswith("# MoveTenant")


async def test_straggling_attempts_of_a_finished_move_touch_nothing(
    move_stack: Stack, engine: AsyncEngine, b_admin: AsyncEngine, worker_engine: AsyncEngine, worker_shards: Shards
) -> None:
    """Attempts Temporal gave up on may still run (a worker cut off from
    Temporal but not from the databases): after the move finished, each step
    run again for it refuses or finds nothing to do; the live copy on b and
    the placement stay as they are."""
    tenant = await _tenant_on_default(move_stack.stubs, 300, engine)
    schema = schema_name_for(uuid.UUID(tenant.id))
    response = await _move(move_stack.stubs, tenant.id, "b")
    done = await wait_done(move_stack.stubs, response.operation.name, timeout=90)
    assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED, done
    live = await _rows(b_admin, schema)

    activities = MoveActivities(worker_engine, worker_shards)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_id=response.operation.name.removeprefix(OPERATION_PREFIX), heartbeat_timeout=None
    )
    move = MoveTenantInput(tenant.id, "default", "b")
    for step in (activities.prepare_move, activities.bulk_copy):
        with pytest.raises(ApplicationError) as refused:
            await env.run(step, move)
        assert refused.value.type == MOVE_REFUSED
    assert (await env.run(activities.switch, move)).window_seconds == 0
    assert await env.run(activities.abort_move, AbortMoveInput(tenant.id, "default", "b", "MOVE_FAILED: late")) == (
        "switched"
    )
    assert await _rows(b_admin, schema) == live
    assert await _placement(engine, tenant.id) == ("b", False)
    assert await _moved_events(engine, tenant.id) == 1


async def test_the_switch_checksum_ignores_physical_order_and_sees_one_changed_value(
    engine: AsyncEngine, b_admin: AsyncEngine
) -> None:
    """The same rows written in opposite orders on the two servers give the
    same count and digest (the checksum orders by primary key, the servers'
    text output pinned alike); one changed value, or one row fewer, does not."""
    schema = schema_name_for(uuid.uuid4())
    at = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [(uuid.uuid4(), f"p-{n}", "d" * (n % 7), n % 3 == 0, at, at + timedelta(seconds=n)) for n in range(300)]

    async def digests(target: AsyncEngine) -> dict[str, tuple[int, bytes]]:
        async with target.connect() as conn:
            driver = await driver_of(conn)
            async with driver.transaction(readonly=True):
                await _pin_text_output(driver)
                return await _checksums(driver, schema, await _table_shapes(driver, schema))

    async def write(target: AsyncEngine, ordered: list[tuple[Any, ...]]) -> None:
        async with target.begin() as conn:
            driver = await driver_of(conn)
            await driver.execute(tenant_schema_script(schema))
            await driver.copy_records_to_table(
                "projects",
                schema_name=schema,
                records=ordered,
                columns=["id", "name", "description", "archived", "create_time", "update_time"],
            )

    try:
        await write(engine, rows)
        await write(b_admin, rows[::-1])
        on_default, on_b = await digests(engine), await digests(b_admin)
        assert on_default == on_b and on_default["projects"][0] == 300
        async with b_admin.begin() as conn:
            await conn.execute(text(f"UPDATE \"{schema}\".projects SET description = 'x' WHERE name = 'p-150'"))
        changed = await digests(b_admin)
        assert changed["projects"][0] == 300 and changed["projects"][1] != on_default["projects"][1]
        async with b_admin.begin() as conn:
            await conn.execute(text(f"DELETE FROM \"{schema}\".projects WHERE name = 'p-150'"))
        assert (await digests(b_admin))["projects"][0] == 299
    finally:
        for target in (engine, b_admin):
            async with target.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def test_a_move_between_two_names_for_one_database_is_refused_before_touching_it(
    move_stack: Stack, engine: AsyncEngine, worker_engine: AsyncEngine, database_urls: DatabaseUrls
) -> None:
    """`default` and `again` name the control plane's database: building the
    target would drop the live schema. The worker refuses such a move before
    it touches anything (the API refuses it first: test_shards_api)."""
    tenant = await _tenant_on_default(move_stack.stubs, 20, engine)
    schema = schema_name_for(uuid.UUID(tenant.id))
    before = await _rows(engine, schema)
    workflow_id = new_workflow_id(OperationKind.MOVE, uuid.UUID(tenant.id))
    async with worker_engine.begin() as conn:
        await conn.execute(
            operation_sql.insert_pending(
                workflow_id,
                uuid.UUID(tenant.id),
                OperationKind.MOVE,
                None,
                "test",
                source_shard="default",
                target_shard="again",
            )
        )
    shards = shards_with_default(worker_engine, database_urls.worker, again=database_urls.worker)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=workflow_id, heartbeat_timeout=None)
    prepare = MoveActivities(worker_engine, shards).prepare_move
    with pytest.raises(ApplicationError) as refused:
        await env.run(prepare, MoveTenantInput(tenant.id, "default", "again"))
    assert refused.value.type == MOVE_REFUSED and "SAME_DATABASE" in str(refused.value)
    assert await _rows(engine, schema) == before
    assert await _placement(engine, tenant.id) == ("default", False)

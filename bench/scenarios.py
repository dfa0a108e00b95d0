"""The scenarios and their floors, measured side by side in one run.

Every scenario talks to the real services over gRPC on 127.0.0.1; the floors
do the same unit of work with nothing of Tenantry in the way (a no-op RPC on
the same server, raw asyncpg, raw Temporal). Results are plain dicts that
`bench.report` turns into JSON, Markdown and a chart.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from bench import db
from bench.config import BenchConfig
from bench.noop_worker import NOOP_ACTIVITY_WORKFLOW, NOOP_PROVISION_WORKFLOW, NOOP_WORKFLOW
from bench.rss import CpuMeter, RssSampler
from bench.stack import SHARD_B, BenchStack
from bench.stats import LoadResult, progress, ratio, run_load, summarize
from provisioner_worker.worker import MAX_CONCURRENT_ACTIVITIES
from tenantry.db.engine import asyncpg_dsn, create_engine
from tenantry.settings import DEFAULT_SHARD
from tenantry.v1 import (
    event_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
    tenant_pb2,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from tenantry.workflow_contract import WORKFLOW_START_TIMEOUT, ProvisionTenantInput, provision_workflow_id
from tenantry_dev.tokens import channel_with_token

_engine_defaults = inspect.signature(create_engine).parameters
RPC_TIMEOUT = 30.0
# The API's engine (tenantry.db.engine.create_engine defaults): its most
# concurrent transactions, which the database floor gets too.
API_DB_CONNECTIONS = _engine_defaults["pool_size"].default + _engine_defaults["max_overflow"].default
# The worker runs at most this many activities at once, each on one connection:
# the DDL floor gets as many connections, the no-op worker as many slots.
WORKER_ACTIVITY_SLOTS = MAX_CONCURRENT_ACTIVITIES


def _slug() -> str:
    return f"bench-{uuid.uuid4().hex[:16]}"


def registration(slug: str) -> tenant_service_pb2.RegisterTenantRequest:
    return tenant_service_pb2.RegisterTenantRequest(
        slug=slug,
        display_name=f"Tenant {slug}",
        admin_email=f"admin@{slug}.example.com",
        admin_display_name="Ada Admin",
        # The API has two shards (TENANTRY_SHARDS): every scenario's tenants
        # stay on `default`, as before shards; only scenario 2's rows for
        # shard b use a tenant there.
        shard=DEFAULT_SHARD,
    )


@dataclass
class Bench:
    config: BenchConfig
    stack: BenchStack
    channel: grpc.aio.Channel
    bare_channel: grpc.aio.Channel
    tenants: tenant_service_pb2_grpc.TenantServiceAsyncStub
    # The API with a day's deletion retention (tenant-api-retained): undelete finds its tenant.
    retained_channel: grpc.aio.Channel
    retained_tenants: tenant_service_pb2_grpc.TenantServiceAsyncStub
    projects: project_service_pb2_grpc.ProjectServiceAsyncStub
    bare_projects: project_service_pb2_grpc.ProjectServiceAsyncStub
    # The bare server against shard b (scenario 2's floor on b).
    bare_b_channel: grpc.aio.Channel
    bare_b_projects: project_service_pb2_grpc.ProjectServiceAsyncStub
    events: event_service_pb2_grpc.TenantEventServiceAsyncStub
    health: health_pb2_grpc.HealthAsyncStub
    temporal: Client
    pool: asyncpg.Pool
    outcomes: db.Outcomes
    rss: RssSampler
    cpu: CpuMeter
    results: dict[str, Any] = field(default_factory=dict)
    seeded: int = 0
    # ACTIVE tenants registered by the scenarios: the deletion scenario's victims.
    registered: list[str] = field(default_factory=list)

    @classmethod
    async def connect(cls, config: BenchConfig, stack: BenchStack) -> Bench:
        api = stack.services["tenant-api"].address
        bare = stack.services["bare-api"].address
        # Both carry the token, so the client does the same work for either;
        # the bare API (no interceptors) ignores it.
        token = stack.admin_token()
        channel = channel_with_token(api, token)
        bare_channel = channel_with_token(bare, token)
        bare_b_channel = channel_with_token(stack.services["bare-api-b"].address, token)
        retained_channel = channel_with_token(stack.services["tenant-api-retained"].address, token)
        dsn = asyncpg_dsn(stack.database_url)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=WORKER_ACTIVITY_SLOTS)
        outcomes = db.Outcomes(dsn)
        await outcomes.start()
        pids = {
            name: stack.services[name].pid
            for name in ("tenant-api", "tenant-api-retained", "provisioner-worker", "temporal")
        }
        pids.update({name: stack.services[name].pid for name in ("noop-worker", "bare-api", "bare-api-b")})
        rss = RssSampler(pids)
        rss.start()
        cpu = CpuMeter(
            {
                **pids,
                "postgres": int(stack.postgres.get_pid()),
                "postgres-b": int(stack.shard_b_postgres.get_pid()),
                "bench": os.getpid(),
            },
            with_children=("postgres", "postgres-b"),
        )
        return cls(
            config=config,
            stack=stack,
            channel=channel,
            bare_channel=bare_channel,
            tenants=tenant_service_pb2_grpc.TenantServiceStub(channel),
            retained_channel=retained_channel,
            retained_tenants=tenant_service_pb2_grpc.TenantServiceStub(retained_channel),
            projects=project_service_pb2_grpc.ProjectServiceStub(channel),
            bare_projects=project_service_pb2_grpc.ProjectServiceStub(bare_channel),
            bare_b_channel=bare_b_channel,
            bare_b_projects=project_service_pb2_grpc.ProjectServiceStub(bare_b_channel),
            events=event_service_pb2_grpc.TenantEventServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            temporal=await Client.connect(stack.temporal_address),
            pool=pool,
            outcomes=outcomes,
            rss=rss,
            cpu=cpu,
        )

    async def close(self) -> None:
        await self.rss.stop()
        await self.outcomes.close()
        await self.pool.close()
        await self.channel.close(None)
        await self.bare_channel.close(None)
        await self.bare_b_channel.close(None)
        await self.retained_channel.close(None)

    # -- helpers -------------------------------------------------------------

    def phase(self, name: str) -> None:
        self.rss.phase = name
        self.stack.check_alive()

    async def register(self, slug: str | None = None) -> tenant_service_pb2.RegisterTenantResponse:
        return await self.tenants.RegisterTenant(registration(slug or _slug()), timeout=RPC_TIMEOUT)

    async def settle(self, tenant_ids: list[str]) -> dict[str, float]:
        """Waits (bounded) until every tenant's provisioning finished."""
        return await self._settle([db.Outcomes.provisioned(t) for t in tenant_ids], "provisioned")

    async def settle_deletions(self, operation_names: list[str]) -> dict[str, float]:
        """Waits (bounded) until every deletion operation finished (the bench's
        API purges at once: its retention is a millisecond)."""
        return await self._settle([name.removeprefix("operations/") for name in operation_names], "deleted")

    async def _settle(self, workflow_ids: list[str], what: str) -> dict[str, float]:
        done = await self.outcomes.wait_all(workflow_ids, self.config.settle_timeout_seconds)
        if len(done) < len(workflow_ids):
            progress(f"WARNING: {len(workflow_ids) - len(done)} of {len(workflow_ids)} tenants not {what} in time")
        return done

    async def states(self, tenant_ids: list[str]) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT state, count(*) AS n FROM tenants WHERE id = ANY($1::uuid[]) GROUP BY state",
                [uuid.UUID(t) for t in tenant_ids],
            )
        return {row["state"]: int(row["n"]) for row in rows}

    async def never_started(self, tenant_ids: list[str]) -> int:
        """Provisioning operations still PENDING (after settling): their start
        failed. RegisterTenant answers PENDING either way, since the worker's
        first activity writes RUNNING, so only the database tells."""
        async with self.pool.acquire() as conn:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM workflow_executions "
                    "WHERE workflow_id = ANY($1::text[]) AND state = 'PENDING'",
                    [db.Outcomes.provisioned(t) for t in tenant_ids],
                )
            )

    async def active_count(self) -> int:
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM tenants WHERE state = 'ACTIVE'"))

    async def start_noop(self, workflow: str, tag: str) -> Any:
        return await self.temporal.start_workflow(
            workflow,
            tag,
            id=f"bench-noop-{tag}",
            task_queue=self.stack.noop_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            rpc_timeout=WORKFLOW_START_TIMEOUT,
        )

    async def start_provision_floor(self) -> Any:
        """RegisterTenant's start on the raw client: the same options, id form and
        input (ProvisionTenantInput), a no-op workflow on the floor's task queue."""
        return await self.temporal.start_workflow(
            NOOP_PROVISION_WORKFLOW,
            ProvisionTenantInput(tenant_id=str(uuid.uuid4()), admin_user_id=str(uuid.uuid4())),
            id=provision_workflow_id(uuid.uuid4()),
            task_queue=self.stack.noop_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            rpc_timeout=WORKFLOW_START_TIMEOUT,
        )


# -- warmup --------------------------------------------------------------------


async def warmup(bench: Bench) -> None:
    """Every code path once, so no scenario pays for first imports, caches,
    workflow sandbox loading or pool growth; the warmup tenants are deleted
    again so the growth scenario starts at zero ACTIVE tenants."""
    bench.phase("warmup")
    progress("warmup: registering, reading and deleting 3 tenants; no-op workflows")
    responses = [await bench.register() for _ in range(3)]
    ids = [r.tenant.id for r in responses]
    await bench.settle(ids)
    metadata = (("x-tenant-id", ids[0]),)
    await bench.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="warmup"), metadata=metadata, timeout=RPC_TIMEOUT
    )
    await bench.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata)
    await bench.bare_projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata)
    deletions = [
        await bench.tenants.DeleteTenant(
            tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant_id), timeout=RPC_TIMEOUT
        )
        for tenant_id in ids
    ]
    await bench.settle_deletions([d.operation.name for d in deletions])
    for workflow in (NOOP_WORKFLOW, NOOP_ACTIVITY_WORKFLOW):
        handles = [await bench.start_noop(workflow, f"warmup-{uuid.uuid4().hex}") for _ in range(3)]
        await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), bench.config.settle_timeout_seconds)
    handles = [await bench.start_provision_floor() for _ in range(3)]
    await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), bench.config.settle_timeout_seconds)
    await bench.health.Check(health_pb2.HealthCheckRequest())
    states = await bench.states(ids)
    if states != {"DELETED": len(ids)}:
        raise RuntimeError(f"warmup tenants did not end DELETED: {states}")


# -- scenario 1: RegisterTenant against its floors -------------------------------


async def _measure(bench: Bench, name: str, operation: Any, concurrency: int, total: int) -> LoadResult:
    await run_load(operation, concurrency=concurrency, total=max(concurrency, 4))  # warmup, not recorded
    before = bench.cpu.snapshot()
    result = await run_load(operation, concurrency=concurrency, total=total)
    result.cpu_ms_per_op = bench.cpu.per_operation_ms(before, total)
    summary = result.summary()
    progress(
        f"  {name:<22} c={concurrency:<3} n={total:<4} p50={summary.get('p50_ms', 0):8.2f} ms "
        f"p99={summary.get('p99_ms', 0):8.2f} ms  {result.throughput:8.1f}/s  errors={len(result.errors)}"
    )
    return result


async def _register_level(bench: Bench, label: str, concurrency: int, total: int) -> dict[str, Any]:
    registered: list[tenant_service_pb2.RegisterTenantResponse] = []

    async def register(_: int) -> None:
        registered.append(await bench.register())

    result = await _measure(bench, label, register, concurrency, total)
    return {"result": result, "responses": registered}


async def _db_floor(bench: Bench, concurrency: int, total: int) -> LoadResult:
    pool = await asyncpg.create_pool(
        asyncpg_dsn(bench.stack.database_url), min_size=1, max_size=min(concurrency, API_DB_CONNECTIONS)
    )
    try:

        async def once(_: int) -> None:
            await db.register_floor_once(pool, uuid.uuid4().hex[:16])

        return await _measure(bench, "database floor (raw)", once, concurrency, total)
    finally:
        await db.close_statement_rows(pool, db.FLOOR_SLUG_PREFIX)
        await pool.close()


async def _engine_floor(bench: Bench, concurrency: int, total: int) -> LoadResult:
    started: list[Any] = []

    async def once(_: int) -> None:
        started.append(await bench.start_provision_floor())

    # Like RegisterTenant's: only the start is timed; the workflows run once
    # their worker resumes.
    with bench.stack.paused("noop-worker"):
        result = await _measure(bench, "engine floor (start)", once, concurrency, total)
    await asyncio.wait_for(asyncio.gather(*(h.result() for h in started)), bench.config.settle_timeout_seconds)
    return result


async def scenario_register(bench: Bench) -> dict[str, Any]:
    bench.phase("register")
    progress("scenario 1: RegisterTenant vs gRPC, database and engine floors")
    levels = []
    for concurrency in bench.config.register_concurrency:
        total = bench.config.register_requests(concurrency)
        # The API path alone: the worker is paused (SIGSTOP), so provisioning
        # does not compete for the CPU; it catches up once resumed.
        with bench.stack.paused("provisioner-worker"):
            isolated = await _register_level(bench, "RegisterTenant", concurrency, total)
        await bench.settle([r.tenant.id for r in isolated["responses"]])
        # As in production: the worker provisions earlier tenants meanwhile.
        busy = await _register_level(bench, "RegisterTenant (busy)", concurrency, total)
        responses = isolated["responses"] + busy["responses"]
        tenant_ids = [r.tenant.id for r in responses]
        await bench.settle(tenant_ids)
        not_started = await bench.never_started(tenant_ids)
        states = await bench.states(tenant_ids)
        bench.registered.extend(tenant_ids)

        async def health_check(_: int) -> None:
            await bench.health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)

        grpc_floor = await _measure(bench, "gRPC floor (health)", health_check, concurrency, total)

        db_floor = await _db_floor(bench, concurrency, total)

        engine_floor = await _engine_floor(bench, concurrency, total)

        api_p50 = isolated["result"].summary().get("p50_ms", 0.0)
        floor_sum = db_floor.summary().get("p50_ms", 0.0) + engine_floor.summary().get("p50_ms", 0.0)
        levels.append(
            {
                "concurrency": concurrency,
                "register": isolated["result"].summary(),
                "register_worker_busy": busy["result"].summary(),
                "workflow_start_failed": not_started,
                "tenant_states_after": states,
                "floors": {
                    "grpc": grpc_floor.summary(),
                    "db": db_floor.summary(),
                    "engine": engine_floor.summary(),
                },
                "db_plus_engine_p50_ms": round(floor_sum, 3),
                "ratio_p50_vs_db_plus_engine": ratio(api_p50, floor_sum),
            }
        )
    return {
        "description": "RegisterTenant (closed loop) vs a no-op unary RPC on the same server (grpc.health.v1 Check), "
        "RegisterTenant's one statement (with its event CTEs, as the API sends it) with raw asyncpg in autocommit "
        f"(pool capped like the API's: {API_DB_CONNECTIONS}), and the same start_workflow as RegisterTenant's "
        "(USE_EXISTING, the same id form and ProvisionTenantInput) of a no-op workflow on the raw client. "
        "RegisterTenant answers PENDING after its statement and its start (the worker writes RUNNING). "
        "`register` is measured with provisioner-worker paused "
        "(SIGSTOP; it provisions those tenants once resumed), so only the API path is timed, like the floors "
        "(the engine floor's no-op worker is paused the same way); "
        "`register_worker_busy` with the worker provisioning the registered tenants meanwhile, as in production "
        "(on this machine they share the CPUs).",
        "levels": levels,
    }


# -- scenario 2: tenant-scoped reads with and without the interceptor chain --------


async def _active_tenant_with_projects(bench: Bench, count: int) -> tuple[str, list[str]]:
    response = await bench.register()
    tenant_id = response.tenant.id
    await bench.settle([tenant_id])
    return tenant_id, await _create_projects(bench, tenant_id, count)


async def scenario_reads(bench: Bench) -> dict[str, Any]:
    bench.phase("reads")
    progress("scenario 2: tenant-scoped reads, authentication + gate + access log vs the bare API")
    tenant_id, project_ids = await _active_tenant_with_projects(bench, bench.config.read_projects)
    bench.registered.append(tenant_id)
    out = await _read_rows(bench, tenant_id, project_ids, bench.bare_projects)
    # The same reads for a tenant on shard b (the second server): after its
    # first call the gate admits it by b's admission row, in the round trip
    # that opens the call's transaction on b's pool; the floor is the same
    # bare server against b.
    progress(f"scenario 2, shard {SHARD_B}: the same reads for a tenant on the second server")
    assert bench.stack.shard_b_urls is not None
    b_dsn = asyncpg_dsn(bench.stack.shard_b_urls.worker)
    on_b = await db.seed_tenant_on_shard(bench.pool, b_dsn, SHARD_B)
    try:
        b_projects = await _create_projects(bench, str(on_b), bench.config.read_projects)
        await bench.bare_b_projects.ListProjects(
            project_service_pb2.ListProjectsRequest(), metadata=(("x-tenant-id", str(on_b)),), timeout=RPC_TIMEOUT
        )
        out_b = await _read_rows(bench, str(on_b), b_projects, bench.bare_b_projects)
    finally:
        await db.retire_tenant_on_shard(bench.pool, b_dsn, on_b)
    return {
        "description": "ListProjects (page of "
        f"{len(project_ids)}) and GetProject through tenant-api's full interceptor chain (access log, error mapping, "
        "authentication: the bearer token verified on every call, tenant gate) vs the same ProjectServicer/Projects "
        "in a process with no interceptors (bench/bare_api.py: no token check, tenant scope from the x-tenant-id "
        "header, no lookup). Both are separate OS processes with the same engine settings; the client sends the "
        "same token to both. tenant-api has two shards (TENANTRY_SHARDS: default, the control plane's database, and "
        f"{SHARD_B}, a second embedded server); `rpcs` reads a tenant on default, `rpcs_shard_b` a tenant on "
        f"{SHARD_B} (admitted by {SHARD_B}'s own admission row in the round trip that opens the call's transaction "
        f"on {SHARD_B}'s pool, as a default tenant's is by its control-plane row) against the bare server connected "
        f"to {SHARD_B}.",
        "tenant_id": tenant_id,
        "rpcs": out,
        "tenant_id_shard_b": str(on_b),
        "rpcs_shard_b": out_b,
    }


async def _create_projects(bench: Bench, tenant_id: str, count: int) -> list[str]:
    metadata = (("x-tenant-id", tenant_id),)
    project_ids = []
    for i in range(count):
        created = await bench.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=f"project-{i:03d}", description="benchmark project"),
            metadata=metadata,
            timeout=RPC_TIMEOUT,
        )
        project_ids.append(created.project.id)
    return project_ids


async def _read_rows(
    bench: Bench,
    tenant_id: str,
    project_ids: list[str],
    bare_projects: project_service_pb2_grpc.ProjectServiceAsyncStub,
) -> dict[str, Any]:
    """ListProjects and GetProject of `tenant_id` through tenant-api vs `bare_projects`, per concurrency."""
    metadata = (("x-tenant-id", tenant_id),)
    page = len(project_ids)

    def lister(stub: project_service_pb2_grpc.ProjectServiceAsyncStub) -> Any:
        async def call(_: int) -> None:
            response = await stub.ListProjects(
                project_service_pb2.ListProjectsRequest(page_size=page), metadata=metadata, timeout=RPC_TIMEOUT
            )
            assert len(response.projects) == page

        return call

    def getter(stub: project_service_pb2_grpc.ProjectServiceAsyncStub) -> Any:
        async def call(i: int) -> None:
            project_id = project_ids[i % len(project_ids)]
            response = await stub.GetProject(
                project_service_pb2.GetProjectRequest(project_id=project_id), metadata=metadata, timeout=RPC_TIMEOUT
            )
            assert response.project.id == project_id

        return call

    rpcs = {"ListProjects": lister, "GetProject": getter}
    out: dict[str, Any] = {}
    for rpc, make in rpcs.items():
        rows = []
        for concurrency in bench.config.read_concurrency:
            half = max(bench.config.read_requests // 2, 1)
            gate = LoadResult(concurrency)
            bare = LoadResult(concurrency)
            # Two rounds in alternating order, so drift hits both sides alike.
            for first_gate in (True, False):
                order = [("gate", bench.projects), ("bare", bare_projects)]
                if not first_gate:
                    order.reverse()
                for side, stub in order:
                    result = await _measure(bench, f"{rpc} {side}", make(stub), concurrency, half)
                    if side == "gate":
                        gate = gate.merge(result)
                    else:
                        bare = bare.merge(result)
            gate_p50 = gate.summary().get("p50_ms", 0.0)
            bare_p50 = bare.summary().get("p50_ms", 0.0)
            rows.append(
                {
                    "concurrency": concurrency,
                    "with_gate": gate.summary(),
                    "without_interceptors": bare.summary(),
                    "ratio_p50": ratio(gate_p50, bare_p50),
                }
            )
        out[rpc] = rows
    return out


# -- scenario 3: provisioning throughput --------------------------------------------


async def scenario_provisioning(bench: Bench) -> dict[str, Any]:
    bench.phase("provisioning")
    count = bench.config.burst
    progress(f"scenario 3: {count} registrations at once until all ACTIVE")
    started_at: dict[str, float] = {}
    rpc_latencies: list[float] = []
    errors: list[str] = []

    async def one() -> None:
        begin = time.perf_counter()
        try:
            response = await bench.register()
        except grpc.aio.AioRpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")
            return
        rpc_latencies.append(time.perf_counter() - begin)
        started_at[response.tenant.id] = begin

    cpu_before = bench.cpu.snapshot()
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    rpcs_done = time.perf_counter() - t0
    tenant_ids = list(started_at)
    bench.registered.extend(tenant_ids)
    done = await bench.settle(tenant_ids)
    cpu = bench.cpu.per_operation_ms(cpu_before, count)
    states = await bench.states(tenant_ids)
    not_started = await bench.never_started(tenant_ids)
    finished = [done[db.Outcomes.provisioned(t)] for t in tenant_ids if db.Outcomes.provisioned(t) in done]
    total = (max(finished) - t0) if finished else float("nan")
    to_active = [
        done[db.Outcomes.provisioned(t)] - started_at[t] for t in tenant_ids if db.Outcomes.provisioned(t) in done
    ]
    active = states.get("ACTIVE", 0)
    system: dict[str, Any] = {
        "count": count,
        "active": active,
        "errors": len(errors),
        "workflow_start_failed": not_started,
        "tenant_states_after": states,
        "all_rpcs_returned_s": round(rpcs_done, 3),
        "all_active_s": round(total, 3),
        "tenants_per_s": round(active / total, 2) if finished else 0.0,
        "register_rpc": summarize(rpc_latencies),
        "register_to_active": summarize(to_active),
        "cpu_ms_per_tenant": cpu,
    }
    latency = system["register_to_active"]
    progress(
        f"  Tenantry               {active}/{count} ACTIVE in {total:.2f}s = {system['tenants_per_s']}/s, "
        f"p50 {latency.get('p50_ms', 0):.0f} ms p95 {latency.get('p95_ms', 0):.0f} ms"
    )

    ddl = await _ddl_floor(bench, count)
    engine = await _temporal_floor(bench, count)
    floor_tps = min(ddl["tenants_per_s"], engine["tenants_per_s"])
    cpu_total = system["cpu_ms_per_tenant"]["total"]
    return {
        # What the machine's CPUs allow at the CPU each tenant costs the stack.
        "cpu_bound_tenants_per_s": round(1000 * (os.cpu_count() or 1) / cpu_total, 1) if cpu_total > 0 else None,
        "description": f"{count} RegisterTenant calls at once; time until all are ACTIVE (the commit that marks a "
        "tenant ACTIVE also completes its operation and notifies tenantry_operation_done, which the benchmark "
        "listens to). Floors: the same tenant DDL with raw asyncpg, all submitted at once over "
        f"{WORKER_ACTIVITY_SLOTS} connections (one per worker activity slot); the same number of no-op workflows "
        "with one no-op activity each on the same Temporal server (bench/noop_worker.py, as many activity slots as "
        "the worker). cpu_ms_per_tenant: CPU used by each process (PostgreSQL: all its backends) per tenant.",
        "tenantry": system,
        "floors": {"db_ddl": ddl, "engine": engine},
        "lower_floor_tenants_per_s": floor_tps,
        "ratio_throughput_vs_lower_floor": ratio(system["tenants_per_s"], floor_tps),
    }


async def _ddl_floor(bench: Bench, count: int) -> dict[str, Any]:
    schemas = [f"t_{uuid.uuid4().hex}" for _ in range(count)]
    latencies: list[float] = []
    cpu_before = bench.cpu.snapshot()
    t0 = time.perf_counter()

    async def one(schema: str) -> None:
        await db.ddl_floor_once(bench.pool, schema)
        latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one(s) for s in schemas))
    total = time.perf_counter() - t0
    cpu = bench.cpu.per_operation_ms(cpu_before, count)
    await db.drop_schemas(bench.pool, schemas)
    result: dict[str, Any] = {
        "count": count,
        "all_done_s": round(total, 3),
        "tenants_per_s": round(count / total, 2),
        "submit_to_done": summarize(latencies),
        "cpu_ms_per_tenant": cpu,
    }
    progress(f"  DDL floor (raw)        {count} schemas in {total:.2f}s = {result['tenants_per_s']}/s")
    return result


async def _temporal_floor(bench: Bench, count: int) -> dict[str, Any]:
    latencies: list[float] = []
    cpu_before = bench.cpu.snapshot()
    t0 = time.perf_counter()

    async def one() -> None:
        begin = time.perf_counter()
        handle = await bench.start_noop(NOOP_ACTIVITY_WORKFLOW, uuid.uuid4().hex)
        await handle.result()
        latencies.append(time.perf_counter() - begin)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), bench.config.settle_timeout_seconds)
    total = time.perf_counter() - t0
    result: dict[str, Any] = {
        "count": count,
        "all_done_s": round(total, 3),
        "tenants_per_s": round(count / total, 2),
        "start_to_done": summarize(latencies),
        "cpu_ms_per_tenant": bench.cpu.per_operation_ms(cpu_before, count),
    }
    progress(f"  engine floor (no-op)   {count} workflows in {total:.2f}s = {result['tenants_per_s']}/s")
    return result


# -- scenario 4: growth ------------------------------------------------------------


async def growth_level(bench: Bench, level: int) -> dict[str, Any]:
    bench.phase(f"growth-{level}")
    current = await bench.active_count()
    seeded = {}
    if current < level:
        missing = level - current
        progress(f"scenario 4: seeding {missing} ACTIVE tenants with schemas (fast path) to reach {level}")
        t0 = time.perf_counter()
        await db.seed_active_tenants(bench.pool, missing, bench.config.seed_batch, bench.seeded)
        bench.seeded += missing
        elapsed = time.perf_counter() - t0
        seeded = {"seeded": missing, "seed_s": round(elapsed, 2), "seed_per_s": round(missing / elapsed, 1)}
        progress(f"  seeded {missing} in {elapsed:.1f}s ({missing / elapsed:.0f}/s)")
    existing = await bench.active_count()
    # Every level starts from a settled database: no autovacuum of the catalog
    # churn the seeding or earlier scenarios left (thousands of dropped schemas).
    t0 = time.perf_counter()
    async with bench.pool.acquire() as conn:
        await conn.execute("VACUUM (ANALYZE)", timeout=600)
    vacuum_s = time.perf_counter() - t0
    progress(f"scenario 4: growth at {existing} existing ACTIVE tenants (VACUUM ANALYZE took {vacuum_s:.1f}s)")

    batch = bench.config.growth_batch
    to_active: list[float] = []
    new_ids: list[str] = []

    async def provision(_: int) -> None:
        begin = time.perf_counter()
        response = await bench.register()
        new_ids.append(response.tenant.id)
        finished = await bench.outcomes.wait(
            db.Outcomes.provisioned(response.tenant.id), bench.config.settle_timeout_seconds
        )
        to_active.append(finished - begin)

    result = await run_load(provision, concurrency=bench.config.growth_concurrency, total=batch)
    states = await bench.states(new_ids)
    tps = states.get("ACTIVE", 0) / result.wall_seconds if result.wall_seconds else 0.0
    cost_ms = 1000 * result.wall_seconds / batch
    progress(
        f"  provisioning {batch} at c={bench.config.growth_concurrency}: {tps:.2f} tenants/s, "
        f"{cost_ms:.1f} ms per tenant, p50 register->ACTIVE {1000 * _p50(to_active):.0f} ms"
    )

    async with bench.pool.acquire() as conn:
        sample = [
            str(r["id"])
            for r in await conn.fetch(
                "SELECT id FROM tenants WHERE state = 'ACTIVE' ORDER BY random() LIMIT $1", bench.config.growth_reads
            )
        ]
        catalog = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%') AS schemas,"
            " (SELECT count(*) FROM pg_class) AS relations, pg_database_size(current_database()) AS db_bytes"
        )
    random.shuffle(sample)

    async def read(i: int) -> None:
        await bench.projects.ListProjects(
            project_service_pb2.ListProjectsRequest(page_size=10),
            metadata=(("x-tenant-id", sample[i % len(sample)]),),
            timeout=RPC_TIMEOUT,
        )

    reads = await _measure(bench, "ListProjects (spread)", read, 1, bench.config.growth_reads)
    return {
        "target": level,
        "existing_active_tenants": existing,
        **seeded,
        "vacuum_s": round(vacuum_s, 2),
        "provisioning": {
            "batch": batch,
            "concurrency": bench.config.growth_concurrency,
            "wall_s": round(result.wall_seconds, 3),
            "errors": len(result.errors),
            "tenant_states_after": states,
            "tenants_per_s": round(tps, 2),
            "cost_ms_per_tenant": round(cost_ms, 2),
            "register_to_active": summarize(to_active),
        },
        "read": {"distinct_tenants": len(set(sample)), **reads.summary()},
        "catalog": {
            "tenant_schemas": int(catalog["schemas"]),
            "pg_class_rows": int(catalog["relations"]),
            "database_mib": round(int(catalog["db_bytes"]) / 1048576, 1),
        },
    }


def _p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2] if samples else float("nan")


# -- scenario 5: deletion ------------------------------------------------------------


async def scenario_deletion(bench: Bench) -> dict[str, Any]:
    bench.phase("deletion")
    tenant_ids = list(dict.fromkeys(bench.registered))
    count = min(bench.config.deletions, len(tenant_ids))
    progress(f"scenario 5: {count} DeleteTenant calls, each waited until DELETED")
    rpc: list[float] = []
    to_deleted: list[float] = []
    wrong_state = 0
    chosen, rest = tenant_ids[:count], tenant_ids[count:]
    for tenant_id in chosen:
        begin = time.perf_counter()
        response = await bench.tenants.DeleteTenant(
            tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant_id), timeout=RPC_TIMEOUT
        )
        rpc.append(time.perf_counter() - begin)
        if response.tenant.state != tenant_pb2.TENANT_STATE_DELETING:
            wrong_state += 1
        finished = await bench.outcomes.wait(
            response.operation.name.removeprefix("operations/"), bench.config.settle_timeout_seconds
        )
        to_deleted.append(finished - begin)
    sequential: dict[str, Any] = {
        "count": count,
        "delete_rpc": summarize(rpc),
        "delete_to_deleted": summarize(to_deleted),
        "response_not_deleting": wrong_state,
        "tenant_states_after": await bench.states(chosen),
        "schemas_left": await _schemas_left(bench, chosen),
    }
    progress(
        f"  DeleteTenant p50 {sequential['delete_rpc'].get('p50_ms', 0):.1f} ms, delete->DELETED p50 "
        f"{sequential['delete_to_deleted'].get('p50_ms', 0):.0f} ms, states {sequential['tenant_states_after']}"
    )

    # Every other tenant the scenarios registered goes too, so the growth
    # scenario counts only the tenants it put there itself.
    concurrency = bench.config.growth_concurrency
    progress(f"scenario 5: deleting the other {len(rest)} registered tenants at concurrency {concurrency}")
    t0 = time.perf_counter()

    deletions: list[str] = []

    async def delete(i: int) -> None:
        response = await bench.tenants.DeleteTenant(
            tenant_service_pb2.DeleteTenantRequest(tenant_id=rest[i]), timeout=RPC_TIMEOUT
        )
        deletions.append(response.operation.name)

    result = await run_load(delete, concurrency=concurrency, total=len(rest))
    done = await bench.settle_deletions(deletions)
    total = (max(done.values()) - t0) if done else float("nan")
    bulk = {
        "count": len(rest),
        "concurrency": concurrency,
        "delete_rpc": result.summary(),
        "all_deleted_s": round(total, 3),
        "deleted_per_s": round(len(done) / total, 2) if done else 0.0,
        "tenant_states_after": await bench.states(rest),
        "schemas_left": await _schemas_left(bench, rest),
    }
    progress(f"  {len(done)}/{len(rest)} DELETED in {total:.1f}s = {bulk['deleted_per_s']}/s")
    bench.registered.clear()
    return {
        "description": "DeleteTenant on ACTIVE tenants: first one at a time, each waited until DELETED (RPC latency "
        "and time until the deletion workflow's commit that marks the tenant DELETED, schema dropped); then every "
        "other tenant the scenarios registered, at fixed concurrency, until all are DELETED.",
        "sequential": sequential,
        "bulk": bulk,
    }


async def _schemas_left(bench: Bench, tenant_ids: list[str]) -> int:
    async with bench.pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1::text[])",
                ["t_" + uuid.UUID(t).hex for t in tenant_ids],
            )
        )


async def postgres_settings(bench: Bench) -> dict[str, str]:
    async with bench.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
            ["server_version", "max_connections", "shared_buffers", "fsync", "synchronous_commit", "wal_level"],
        )
    return {r["name"]: f"{r['setting']}{r['unit'] or ''}" for r in rows}

"""Scenario 10: a fleet rollout (`tenantry-migrate tenants`) against its floor.

`fleet_tenants` ACTIVE tenants are seeded at the tenant lineage's previous
revision (rows, and schemas built by that revision's rendered script, as the
worker's role, which owns tenant schemas), then rolled out to head through
the real path: the CLI's own `run` (what `tenantry-migrate tenants` calls),
in this process, which records the MIGRATE operation and starts its workflow
on the worker; timed from the call to the control plane's
`tenantry_operation_done` notification for that operation (sent by the commit
that marks it SUCCEEDED).

Floor: the same rendered per-tenant step (the DDL and the schema's version
stamp, `tenantry.migrations.for_schema`), one transaction per tenant in one
round trip, looped with raw asyncpg over a second set of schemas built the
same way (no tenant rows, so the rollout never sees them), on as many
connections as the rollout's --concurrency. The rollout does more per tenant
than that: the guard (the row locked, its state, revision and the schema's
stamp checked), the row's new revision and the SCHEMA_MIGRATED event.

Then the CLI again with nothing to apply, over every live tenant (the growth
scenario's thousands included): timed from the call to its return.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from typing import Any

import asyncpg

from bench import db
from bench.scenarios import Bench
from bench.stats import progress
from tenantry import fleet_rollout
from tenantry.db.engine import asyncpg_dsn
from tenantry.migrations import (
    for_schema,
    tenant_head_revision,
    tenant_revisions,
    tenant_schema_script_at,
    upgrade_steps,
)
from tenantry.schema_names import schema_name_for
from tenantry.settings import MigrateTenantsSettings

# Tenants per seeding transaction, and seeding transactions at once (the
# machine has 2 cores; PostgreSQL's lock table is finite).
SEED_BATCH = 50
SEED_PARALLEL = 2
LIVE_STATES = ("ACTIVE", "SUSPENDED")


def previous_revision() -> str:
    revisions = tenant_revisions()
    if len(revisions) < 2:
        raise RuntimeError("the tenant lineage has one revision: nothing to roll out")
    return revisions[-2]


async def _seed(dsn: str, schemas: list[str], revision: str, rows: list[uuid.UUID] | None) -> None:
    """Schemas at `revision` (and, with `rows`, their ACTIVE tenant rows),
    SEED_BATCH per transaction, on a connection as the role of `dsn`."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=SEED_PARALLEL)
    try:
        user_id = None
        if rows is not None:
            user_id = uuid.uuid4()
            await pool.execute(
                "INSERT INTO users (id, email, display_name) VALUES ($1, $2, 'Fleet admin')",
                user_id,
                f"fleet-{user_id.hex}@bench.example.com",
            )
        gate = asyncio.Semaphore(SEED_PARALLEL)

        async def batch(start: int) -> None:
            part = schemas[start : start + SEED_BATCH]
            async with gate, pool.acquire() as conn, conn.transaction():
                if rows is not None:
                    ids = rows[start : start + SEED_BATCH]
                    await conn.execute(
                        "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name, "
                        "schema_version) SELECT id, 'fleet-' || left(replace(id::text, '-', ''), 20), "
                        "'Fleet tenant', $2, 'ACTIVE', schema, $3 "
                        "FROM unnest($1::uuid[], $4::text[]) AS s(id, schema)",
                        ids,
                        user_id,
                        revision,
                        part,
                    )
                await conn.execute("\n".join(tenant_schema_script_at(schema, revision) for schema in part))

        await asyncio.gather(*(batch(start) for start in range(0, len(schemas), SEED_BATCH)))
    finally:
        await pool.close()


async def _floor(dsn: str, schemas: list[str], revision: str, concurrency: int) -> float:
    """The rendered steps per schema, one transaction each, `concurrency`
    connections: seconds for all."""
    steps = [step.statements for step in upgrade_steps(revision, tenant_head_revision())]
    if any(statements is None for statements in steps):
        raise RuntimeError("a tenant revision step cannot be rendered: no floor")
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    try:
        queue = list(reversed(schemas))

        async def loop() -> None:
            async with pool.acquire() as conn:
                while queue:
                    schema = queue.pop()
                    body = "\n".join(for_schema(s or (), schema) for s in steps)
                    await conn.execute(f"BEGIN;\n{body}\nCOMMIT;")

        begin = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return time.perf_counter() - begin
    finally:
        await pool.close()


def _settings(bench: Bench) -> MigrateTenantsSettings:
    urls = bench.stack.urls
    if urls is None:
        raise RuntimeError("the stack is not started")
    # As an operator runs `tenantry-migrate tenants`: the migrator's URL, the services' Temporal and task queue.
    return MigrateTenantsSettings.from_env({**bench.stack.service_env(), "TENANTRY_DATABASE_URL": urls.migrator})


async def _cli(settings: MigrateTenantsSettings, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await fleet_rollout.run(fleet_rollout.parser().parse_args(argv), settings, out, err)
    return code, out.getvalue(), err.getvalue()


async def _rollout(bench: Bench, settings: MigrateTenantsSettings, ids: list[uuid.UUID]) -> dict[str, Any]:
    """`tenantry-migrate tenants` as an operator runs it, over `ids` (the only
    live tenants below head): timed from the call to the operation's done
    notification, checked (SUCCEEDED, every tenant at head, one event each)."""
    count, concurrency, head = len(ids), bench.config.fleet_concurrency, tenant_head_revision()
    cpu_before = bench.cpu.snapshot()
    begin = time.perf_counter()
    code, out, err = await _cli(settings, ["--concurrency", str(concurrency)])
    returned = time.perf_counter() - begin
    cpu_ms_per_tenant = bench.cpu.per_operation_ms(cpu_before, count)
    async with bench.pool.acquire() as conn:
        operation = await conn.fetchrow(
            "SELECT workflow_id, state, progress_total, progress_succeeded, progress_failed "
            "FROM workflow_executions WHERE kind = 'MIGRATE' ORDER BY create_time DESC LIMIT 1"
        )
        at_head = await conn.fetchval(
            "SELECT count(*) FROM tenants WHERE id = ANY($1::uuid[]) AND schema_version = $2", ids, head
        )
        events = await conn.fetchval(
            "SELECT count(*) FROM tenant_events WHERE tenant_id = ANY($1::uuid[]) AND type = 'SCHEMA_MIGRATED' "
            "AND operation = $2",
            ids,
            operation["workflow_id"],
        )
    done_at = bench.outcomes.done_at.get(operation["workflow_id"])
    if code != 0 or operation["state"] != "SUCCEEDED" or done_at is None or at_head != count or events != count:
        raise RuntimeError(
            f"fleet rollout over {count}: exit {code}, {dict(operation)}, {at_head} at head, {events} events: "
            f"{out} {err}"
        )
    seconds = done_at - begin
    return {
        "seconds": round(seconds, 3),
        "cli_returned_seconds": round(returned, 3),
        "tenants_per_s": round(count / seconds, 1),
        "operation_state": operation["state"],
        "progress": {
            "total": operation["progress_total"],
            "succeeded": operation["progress_succeeded"],
            "failed": operation["progress_failed"],
        },
        "tenants_at_head": int(at_head),
        "schema_migrated_events": int(events),
        "cpu_ms_per_tenant": cpu_ms_per_tenant,
    }


async def scenario_fleet(bench: Bench) -> dict[str, Any]:
    bench.phase("fleet")
    config = bench.config
    count, concurrency, large = config.fleet_tenants, config.fleet_concurrency, config.fleet_large_tenants
    urls = bench.stack.urls
    assert urls is not None
    worker_dsn = asyncpg_dsn(urls.worker)
    previous, head = previous_revision(), tenant_head_revision()
    settings = _settings(bench)

    rounds: list[dict[str, Any]] = []
    seed_seconds = 0.0
    for number in range(config.fleet_rounds):
        label = f" (round {number + 1} of {config.fleet_rounds})" if config.fleet_rounds > 1 else ""
        progress(f"scenario 10{label}: seeding {count} tenants at {previous} and {count} floor schemas")
        ids = sorted(uuid.uuid4() for _ in range(count))
        floor_schemas = [schema_name_for(uuid.uuid4()) for _ in range(count)]
        seed_begin = time.perf_counter()
        await _seed(worker_dsn, [schema_name_for(t) for t in ids], previous, ids)
        await _seed(worker_dsn, floor_schemas, previous, None)
        seed_seconds += time.perf_counter() - seed_begin
        progress(
            f"scenario 10: tenantry-migrate tenants --concurrency {concurrency}, {count} tenants {previous} -> {head}"
        )
        rollout = await _rollout(bench, settings, ids)
        progress(f"  {count} tenants in {rollout['seconds']:.2f}s = {rollout['tenants_per_s']:.1f}/s")

        progress(f"scenario 10: floor, the same rendered step over {count} schemas on {concurrency} connections")
        cpu_before = bench.cpu.snapshot()
        floor_seconds = await _floor(asyncpg_dsn(bench.stack.database_url), floor_schemas, previous, concurrency)
        floor_cpu = bench.cpu.per_operation_ms(cpu_before, count)
        await db.drop_schemas(bench.pool, floor_schemas)
        progress(f"  {count} schemas in {floor_seconds:.2f}s = {count / floor_seconds:.1f}/s")
        rounds.append(
            {
                "rollout": rollout,
                "floor_seconds": floor_seconds,
                "floor_cpu": floor_cpu,
                "rollout_seconds": rollout["seconds"],
                "ratio": rollout["tenants_per_s"] / (count / floor_seconds),
            }
        )
    # The round with the median ratio (the only one by default).
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    rollout, floor_seconds, floor_cpu = median["rollout"], median["floor_seconds"], median["floor_cpu"]

    large_rollout: dict[str, Any] | None = None
    if large:
        progress(f"scenario 10: seeding {large} tenants at {previous}, then tenantry-migrate tenants over them")
        large_ids = sorted(uuid.uuid4() for _ in range(large))
        await _seed(worker_dsn, [schema_name_for(t) for t in large_ids], previous, large_ids)
        large_rollout = await _rollout(bench, settings, large_ids)
        progress(f"  {large} tenants in {large_rollout['seconds']:.2f}s = {large_rollout['tenants_per_s']:.1f}/s")

    async with bench.pool.acquire() as conn:
        live = await conn.fetchval("SELECT count(*) FROM tenants WHERE state = ANY($1::text[])", list(LIVE_STATES))
    progress(f"scenario 10: tenantry-migrate tenants again, nothing to apply over {live} live tenants")
    begin = time.perf_counter()
    rerun_code, rerun_out, rerun_err = await _cli(settings, ["--concurrency", str(concurrency)])
    rerun_seconds = time.perf_counter() - begin
    if rerun_code != 0 or "nothing to do" not in rerun_out:
        raise RuntimeError(f"fleet rerun: exit {rerun_code}: {rerun_out} {rerun_err}")
    progress(f"  nothing to apply in {rerun_seconds:.3f}s")

    floor_rate = count / floor_seconds
    return {
        "description": f"tenantry-migrate tenants over {count} ACTIVE tenants seeded at {previous} (one-column ALTER "
        f"TABLE ... ADD COLUMN to {head}), --concurrency {concurrency}, timed from the CLI's start to the MIGRATE "
        "operation's done notification; floor: the same rendered step (DDL + version stamp) per schema, one "
        f"transaction each, raw asyncpg on {concurrency} connections over a second set of {count} schemas; then "
        f"the same rollout over {large} more tenants; then the CLI again with nothing to apply over every live "
        "tenant.",
        "tenants": count,
        "concurrency": concurrency,
        "from_revision": previous,
        "to_revision": head,
        "seed_seconds": round(seed_seconds, 2),
        "rollout": rollout,
        "floor": {
            "seconds": round(floor_seconds, 3),
            "tenants_per_s": round(floor_rate, 1),
            "cpu_ms_per_tenant": floor_cpu,
        },
        "ratio_tenants_per_s": round(rollout["tenants_per_s"] / floor_rate, 3),
        "large": {"tenants": large, "rollout": large_rollout},
        "rounds": [
            {
                "rollout_seconds": r["rollout_seconds"],
                "floor_seconds": round(r["floor_seconds"], 3),
                "ratio": round(r["ratio"], 3),
            }
            for r in rounds
        ],
        "rerun": {"live_tenants": int(live), "seconds": round(rerun_seconds, 3), "output": rerun_out.strip()},
    }

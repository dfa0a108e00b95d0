"""Scenario 9: the synchronous lifecycle changes, one at a time.

Per cycle, on an ACTIVE tenant the scenarios registered: SuspendTenant,
ResumeTenant, then DeleteTenant and UndeleteTenant. The delete and undelete go
to tenant-api-retained (the same API with a day's retention): tenant-api
purges at once (its retention is a millisecond, for the deletion scenario), so
an undelete there would find nothing to restore. Every tenant ends ACTIVE
again, for the deletion scenario after this one.

Floors: the same single UPDATE that SuspendTenant and ResumeTenant make
(tenantry.db.tenants.change_state, rendered as the API sends it) with raw
asyncpg in autocommit, on tenants seeded ACTIVE for it, interleaved with the
RPCs so that drift hits both. UndeleteTenant has no floor here: its work spans
the database (the undelete UPDATE, the deletion operation CANCELLED, the event)
and the engine (a signal that wakes the deletion workflow).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bench import db
from bench.scenarios import RPC_TIMEOUT, Bench
from bench.stats import progress, ratio, summarize
from tenantry.v1 import tenant_pb2, tenant_service_pb2

# Cycles run first and not recorded: first calls on tenant-api-retained, pools, caches.
WARMUP_CYCLES = 2
_STEPS = ("suspend", "resume", "suspend_floor", "resume_floor", "delete", "undelete")


async def scenario_lifecycle(bench: Bench) -> dict[str, Any]:
    bench.phase("lifecycle")
    config = bench.config
    tenant_ids = await _active(bench, list(dict.fromkeys(bench.registered))[: config.lifecycle_tenants])
    if not tenant_ids:
        raise RuntimeError("lifecycle scenario: no ACTIVE tenant registered by the earlier scenarios")
    cycles = config.lifecycle_cycles
    progress(
        f"scenario 9: {cycles} cycles of Suspend, Resume, Delete + Undelete over {len(tenant_ids)} ACTIVE tenants, "
        "one call at a time, with the state-change floor interleaved"
    )
    first_seed = bench.seeded
    await db.seed_active_tenants(bench.pool, len(tenant_ids), len(tenant_ids), first_seed)
    bench.seeded += len(tenant_ids)
    floor_ids = await db.seeded_tenant_ids(bench.pool, first_seed, len(tenant_ids))

    latencies: dict[str, list[float]] = {step: [] for step in _STEPS}
    errors: dict[str, list[str]] = {step: [] for step in _STEPS}
    wrong_state: dict[str, int] = {step: 0 for step in ("suspend", "resume", "delete", "undelete")}

    async def timed(step: str, record: bool, call: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        begin = time.perf_counter()
        try:
            response = await call(*args, **kw)
        except (grpc.aio.AioRpcError, RuntimeError) as exc:
            errors[step].append(_describe(exc))
            return None
        if record:
            latencies[step].append(time.perf_counter() - begin)
        return response

    def check(step: str, response: Any, expected: int) -> None:
        if response is not None and response.tenant.state != expected:
            wrong_state[step] += 1

    tenants, retained = bench.tenants, bench.retained_tenants
    for cycle in range(WARMUP_CYCLES + cycles):
        record = cycle >= WARMUP_CYCLES
        tenant_id = tenant_ids[cycle % len(tenant_ids)]
        floor_id = floor_ids[cycle % len(floor_ids)]
        suspend = tenant_service_pb2.SuspendTenantRequest(tenant_id=tenant_id, reason="bench")
        response = await timed("suspend", record, tenants.SuspendTenant, suspend, timeout=RPC_TIMEOUT)
        check("suspend", response, tenant_pb2.TENANT_STATE_SUSPENDED)
        resume = tenant_service_pb2.ResumeTenantRequest(tenant_id=tenant_id)
        response = await timed("resume", record, tenants.ResumeTenant, resume, timeout=RPC_TIMEOUT)
        check("resume", response, tenant_pb2.TENANT_STATE_ACTIVE)
        await timed("suspend_floor", record, db.change_state_floor_once, bench.pool, db.SUSPEND, floor_id)
        await timed("resume_floor", record, db.change_state_floor_once, bench.pool, db.RESUME, floor_id)
        delete = tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant_id)
        response = await timed("delete", record, retained.DeleteTenant, delete, timeout=RPC_TIMEOUT)
        check("delete", response, tenant_pb2.TENANT_STATE_DELETING)
        undelete = tenant_service_pb2.UndeleteTenantRequest(tenant_id=tenant_id)
        response = await timed("undelete", record, retained.UndeleteTenant, undelete, timeout=RPC_TIMEOUT)
        check("undelete", response, tenant_pb2.TENANT_STATE_ACTIVE)

    rows: dict[str, Any] = {}
    for step, floor in (("suspend", "suspend_floor"), ("resume", "resume_floor"), ("delete", None), ("undelete", None)):
        summary = _summary(latencies[step], errors[step], response_wrong_state=wrong_state[step])
        row: dict[str, Any] = {"rpc": summary}
        if floor is not None:
            floor_summary = _summary(latencies[floor], errors[floor])
            row["floor"] = floor_summary
            row["ratio_p50"] = ratio(summary.get("p50_ms", float("nan")), floor_summary.get("p50_ms", float("nan")))
        rows[step] = row
        floor_text = f"  floor p50 {row['floor'].get('p50_ms', 0):6.2f} ms  ratio {row['ratio_p50']}" if floor else ""
        progress(
            f"  {step:<9} p50 {summary.get('p50_ms', 0):7.2f} ms  p95 {summary.get('p95_ms', 0):7.2f} ms"
            f"  errors={len(errors[step])}{floor_text}"
        )
    return {
        "description": "One call at a time, per cycle on an ACTIVE tenant: SuspendTenant, ResumeTenant (tenant-api), "
        "DeleteTenant then UndeleteTenant (tenant-api-retained: the same API with a day's deletion retention, so "
        "the undelete finds the tenant retained; the undelete cancels the deletion operation and wakes its "
        f"workflow). {WARMUP_CYCLES} warmup cycles are not recorded. Floors: Suspend's and Resume's one UPDATE "
        "(tenantry.db.tenants.change_state as the API sends it) with raw asyncpg in autocommit, on seeded ACTIVE "
        "tenants, interleaved with the RPCs; the RPCs also lock the row, write the event and answer over gRPC. "
        "UndeleteTenant and DeleteTenant have no floor (their work spans the database and the engine).",
        "cycles": cycles,
        "tenants": len(tenant_ids),
        "steps": rows,
        "tenant_states_after": await bench.states(tenant_ids),
        "floor_tenant_states_after": await bench.states([str(t) for t in floor_ids]),
    }


async def _active(bench: Bench, tenant_ids: list[str]) -> list[str]:
    async with bench.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id FROM tenants WHERE id = ANY($1::uuid[]) AND state = 'ACTIVE'", [uuid.UUID(t) for t in tenant_ids]
        )
    active = {str(row["id"]) for row in rows}
    return [t for t in tenant_ids if t in active]


def _summary(samples: list[float], errors: list[str], **extra: int) -> dict[str, Any]:
    out: dict[str, Any] = {**summarize(samples), "errors": len(errors), **extra}
    if errors:
        out["error_samples"] = sorted(set(errors))[:5]
    return out


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"

"""The event feed's two costs: the event write inside registration's statement
(scenario 7) and delivery from commit to a WatchTenantEvents stream (scenario 8).

Every tenant state change appends a `tenant_events` row in its own
transaction, numbered from a one-row counter whose lock is held until commit
(tenantry/db/events.py). Scenario 7 runs registration's one statement as the
API runs it (SQLAlchemy, the API's engine settings, autocommit) with and without
the event CTEs, side by side; scenario 8 opens watchers over gRPC and registers
tenants through the API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc

from bench import db
from bench.scenarios import Bench, _measure
from bench.stats import LoadResult, progress, ratio, summarize
from tenantry.db import tenants as tenant_sql
from tenantry.db.engine import create_engine
from tenantry.schema_names import schema_name_for
from tenantry.settings import DEFAULT_SHARD
from tenantry.v1 import event_service_pb2
from tenantry.workflow_contract import provision_workflow_id

# Rows of scenario 7 (statement-level registrations, no workflow behind them).
EVENT_WRITE_SLUG_PREFIX = "evw-"
ACTOR = "bench"

# -- scenario 7: the event write in registration's statement --------------------


def _registration_params() -> dict[str, Any]:
    """Bind parameters of registration's statement, as tenantry.db.tenants.register passes them."""
    tenant_id = uuid.uuid4()
    slug = f"{EVENT_WRITE_SLUG_PREFIX}{uuid.uuid4().hex[:16]}"
    return {
        "user_id": uuid.uuid4(),
        "email": f"admin@{slug}.example.com",
        "admin_display_name": "Ada Admin",
        "tenant_id": tenant_id,
        "slug": slug,
        "display_name": f"Tenant {slug}",
        "schema_name": schema_name_for(tenant_id),
        "workflow_id": provision_workflow_id(tenant_id),
        "request_id": None,
        "actor": ACTOR,
        "labels": {},
        "trace_id": "",
        "shard": DEFAULT_SHARD,
        "shards": [DEFAULT_SHARD],
    }


async def scenario_event_write(bench: Bench) -> dict[str, Any]:
    bench.phase("event-write")
    progress("scenario 7: registration's statement with vs without its event write")
    statements = {
        "with_event": tenant_sql._REGISTER,
        "without_event": tenant_sql._register_statement(record_event=False),
    }
    engine = create_engine(bench.stack.database_url)
    rows = []
    try:

        def runner(side: str) -> Any:
            statement = statements[side]

            async def once(_: int) -> None:
                async with engine.connect() as conn:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    (await conn.execute(statement, _registration_params())).one()

            return once

        for concurrency in bench.config.event_write_concurrency:
            half = max(bench.config.event_write_requests // 2, 1)
            results = {side: LoadResult(concurrency) for side in statements}
            # Two rounds in alternating order, so drift hits both sides alike.
            for first_with in (True, False):
                order = list(statements) if first_with else list(reversed(statements))
                for side in order:
                    measured = await _measure(bench, f"statement {side}", runner(side), concurrency, half)
                    results[side] = results[side].merge(measured)
            with_p50 = results["with_event"].summary().get("p50_ms", 0.0)
            without_p50 = results["without_event"].summary().get("p50_ms", 0.0)
            rows.append(
                {
                    "concurrency": concurrency,
                    "with_event": results["with_event"].summary(),
                    "without_event": results["without_event"].summary(),
                    "ratio_p50": ratio(with_p50, without_p50),
                }
            )
    finally:
        await engine.dispose()
        cleanup = await db.close_statement_rows(bench.pool, EVENT_WRITE_SLUG_PREFIX)
    return {
        "description": "RegisterTenant's one statement (tenantry/db/tenants.py) as the API runs it: SQLAlchemy on "
        "an engine with the API's settings, a pooled connection in autocommit, one round trip, committed; with the "
        "event CTEs (the product's statement: counter row locked until commit, tenant_events insert, its NOTIFY "
        "trigger) vs the same statement built without them (`_register_statement(record_event=False)`, the "
        "benchmark's only). Two alternating rounds per side. The statement's tenants have no workflow: afterwards "
        "those without an event are removed, those with one closed (DELETED; the event log is append-only).",
        "levels": rows,
        "cleanup": cleanup,
    }


# -- scenario 8: event delivery, commit -> watcher ------------------------------


class _Watcher:
    """One WatchTenantEvents stream: when each REGISTERED event arrived and how
    long after its event_time."""

    def __init__(self, bench: Bench, after: int) -> None:
        self.call = bench.events.WatchTenantEvents(event_service_pb2.WatchTenantEventsRequest(after_sequence=after))
        self.latency: dict[str, float] = {}
        self.duplicates = 0
        self.out_of_order = 0
        self.error = ""
        self.changed = asyncio.Event()
        self._last_sequence = after

    async def run(self) -> None:
        try:
            async for response in self.call:
                received = time.time()
                event = response.event
                if event.sequence <= self._last_sequence:
                    self.out_of_order += 1
                self._last_sequence = event.sequence
                if event.type != event_service_pb2.TENANT_EVENT_TYPE_REGISTERED:
                    continue
                if event.tenant_id in self.latency:
                    self.duplicates += 1
                    continue
                self.latency[event.tenant_id] = received - event.event_time.ToNanoseconds() / 1e9
                self.changed.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            pass

    async def wait_for(self, tenant_ids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not tenant_ids <= self.latency.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.error:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return False
        return True


async def scenario_event_delivery(bench: Bench) -> dict[str, Any]:
    bench.phase("event-delivery")
    config = bench.config
    progress(
        f"scenario 8: {config.event_watchers} WatchTenantEvents streams, {config.event_registrations} registrations "
        f"{config.event_register_concurrency} at a time"
    )
    async with bench.pool.acquire() as conn:
        after = int(await conn.fetchval("SELECT last_sequence FROM tenant_event_counter"))
    watchers = [_Watcher(bench, after) for _ in range(config.event_watchers)]
    tasks = [asyncio.create_task(w.run()) for w in watchers]
    registered: list[str] = []
    errors: list[str] = []
    try:
        # Every stream is live (it delivered this tenant's event) before the
        # measured registrations start, so no latency includes opening a watch.
        warm = (await bench.register()).tenant.id
        registered.append(warm)
        for watcher in watchers:
            if not await watcher.wait_for({warm}, config.settle_timeout_seconds):
                raise RuntimeError(f"a watcher never received the warmup event: {watcher.error or 'timeout'}")

        measured: list[str] = []
        queue = iter(range(config.event_registrations))

        async def registrar() -> None:
            for _ in queue:
                try:
                    response = await bench.register()
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")
                    continue
                measured.append(response.tenant.id)

        t0 = time.perf_counter()
        await asyncio.gather(*(registrar() for _ in range(config.event_register_concurrency)))
        registering_s = time.perf_counter() - t0
        registered.extend(measured)
        expected = set(measured)
        await asyncio.gather(*(w.wait_for(expected, config.settle_timeout_seconds) for w in watchers))
        all_delivered_s = time.perf_counter() - t0
    finally:
        for watcher in watchers:
            watcher.call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bench.registered.extend(registered)
    samples = [w.latency[t] for w in watchers for t in expected if t in w.latency]
    missing = sum(len(expected - w.latency.keys()) for w in watchers)
    await bench.settle(registered)
    latency = summarize(samples)
    result = {
        "description": f"{config.event_watchers} WatchTenantEvents streams over gRPC (whole feed, after the last "
        f"sequence at the start) while {config.event_registrations} tenants register through the API, "
        f"{config.event_register_concurrency} at a time, the worker provisioning them meanwhile (so ACTIVATED "
        "events flow too). Latency per (watcher, REGISTERED event): the watcher's receive time minus the event's "
        "event_time. event_time is PostgreSQL's now() in the registering transaction, i.e. its start, which is "
        "before its commit: each sample is an upper bound on commit -> watcher (same host clock). Every stream "
        "first received a warmup registration's event, so none includes opening the watch.",
        "watchers": config.event_watchers,
        "registrations": len(expected),
        "register_errors": len(errors),
        "register_error_samples": sorted(set(errors))[:5],
        "registering_s": round(registering_s, 3),
        "all_delivered_s": round(all_delivered_s, 3),
        "deliveries_expected": len(expected) * len(watchers),
        "deliveries": len(samples),
        "missing": missing,
        "duplicates": sum(w.duplicates for w in watchers),
        "out_of_order": sum(w.out_of_order for w in watchers),
        "watch_errors": [w.error for w in watchers if w.error],
        "commit_to_watcher": latency,
    }
    progress(
        f"  delivered {len(samples)}/{len(expected) * len(watchers)} (missing {missing}), commit -> watcher "
        f"p50 {latency.get('p50_ms', 0):.1f} ms p99 {latency.get('p99_ms', 0):.1f} ms"
    )
    return result

"""The settle phase and the invariants checked at the end, against the ledger,
the database (as its superuser) and the event feed."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from soak.ledger import Entry
from soak.load import CALL_TIMEOUT, EVENT_OF, Apis, Run, Watcher, state_name
from soak.stack import log
from tenantry.v1 import event_service_pb2

# Where a tenant must be once the system settled, given the state its last
# acknowledged call (or read) left it in: nothing in between any more.
SETTLED = {
    "CREATING": {"ACTIVE", "FAILED"},
    "ACTIVE": {"ACTIVE"},
    "SUSPENDED": {"SUSPENDED"},
    "FAILED": {"FAILED"},
    "DELETING": {"DELETED"},
    "DELETED": {"DELETED"},
}
LIVE = ("ACTIVE", "SUSPENDED")
SCHEMA_PATTERN = "^t_[0-9a-f]{32}$"


async def _open_work(engine: AsyncEngine) -> tuple[dict[str, int], int]:
    async with engine.connect() as conn:
        tenants: dict[Any, Any] = dict(
            (
                await conn.execute(
                    text("SELECT state, count(*) FROM tenants WHERE state IN ('CREATING', 'DELETING') GROUP BY state")
                )
            ).all()
        )
        operations = await conn.scalar(
            text("SELECT count(*) FROM workflow_executions WHERE state IN ('PENDING', 'RUNNING')")
        )
    return {str(k): int(v) for k, v in tenants.items()}, int(operations or 0)


async def settle(engine: AsyncEngine, timeout: float) -> dict[str, Any]:
    """Waits until no tenant is CREATING or DELETING and no operation is open
    (or `timeout`); how long it took."""
    started = time.monotonic()
    while True:
        try:
            tenants, operations = await _open_work(engine)
        except Exception as error:  # noqa: BLE001 - the database may still be coming back
            tenants, operations = {"unreachable": 1}, -1
            log(f"settle: database not readable yet ({type(error).__name__})")
        waited = time.monotonic() - started
        if not tenants and operations == 0:
            return {"seconds": round(waited, 1), "settled": True}
        if waited > timeout:
            return {
                "seconds": round(waited, 1),
                "settled": False,
                "open_tenants": tenants,
                "open_operations": operations,
            }
        await asyncio.sleep(1.0)


async def full_feed(apis: Apis) -> list[event_service_pb2.TenantEvent]:
    events: list[event_service_pb2.TenantEvent] = []
    token = ""
    for attempt in range(100_000):
        endpoint = apis.get(attempt)
        request = event_service_pb2.ListTenantEventsRequest(page_size=500, page_token=token)
        response = await endpoint.events.ListTenantEvents(request, timeout=CALL_TIMEOUT)
        events += response.events
        token = response.next_page_token
        if not token:
            return events
    raise RuntimeError("the event feed did not end")


def event_type(event: event_service_pb2.TenantEvent) -> str:
    return event_service_pb2.TenantEventType.Name(event.type).removeprefix("TENANT_EVENT_TYPE_")


async def final_checks(run: Run, engine: AsyncEngine, watchers: list[Watcher]) -> dict[str, Any]:
    ledger = run.ledger
    summary: dict[str, Any] = {}
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id::text AS id, state, schema_name FROM tenants"))).all()
        open_operations = (
            await conn.execute(
                text(
                    "SELECT workflow_id, tenant_id::text AS tenant_id, kind, state FROM workflow_executions "
                    "WHERE state IN ('PENDING', 'RUNNING')"
                )
            )
        ).all()
        schemas = set(
            (
                await conn.execute(
                    text("SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname ~ :p"), {"p": SCHEMA_PATTERN}
                )
            ).scalars()
        )
        projects: dict[str, set[str]] = {}
        for tenant_id, tenant in run.tenants.items():
            row = next((r for r in rows if r.id == tenant_id), None)
            if tenant.projects and row is not None and row.state in LIVE:
                found = await conn.execute(text(f'SELECT id::text FROM "{row.schema_name}".projects'))
                projects[tenant_id] = set(found.scalars())
    db_state = {r.id: r.state for r in rows}
    summary["tenant_states"] = dict(Counter(db_state.values()))

    def last_entries(tenant_id: str, count: int = 4) -> list[Entry]:
        return [e for e in ledger.for_tenant(tenant_id) if e.rpc not in ("GetTenant", "GetProject", "ListProjects")][
            -count:
        ]

    # Nothing stuck, nothing open.
    for tenant_id, state in db_state.items():
        ledger.check(
            "nothing_stuck_after_settle",
            state not in ("CREATING", "DELETING"),
            f"tenant {tenant_id} still {state} after the settle phase",
            last_entries(tenant_id),
        )
    ledger.check(
        "no_open_operation",
        not open_operations,
        f"{len(open_operations)} operations still PENDING or RUNNING: "
        + ", ".join(f"{o.workflow_id} {o.kind} {o.state}" for o in open_operations[:10]),
        [e for o in open_operations[:5] for e in last_entries(o.tenant_id or "", 2)],
    )

    # Schemas and live tenants, one for one.
    live_schemas = {r.schema_name: r.id for r in rows if r.state in LIVE}
    for schema in sorted(schemas - set(live_schemas)):
        owner = next((r for r in rows if r.schema_name == schema), None)
        ledger.check(
            "no_schema_without_live_tenant",
            False,
            f"schema {schema} exists; its tenant is {owner.state if owner else 'unknown'}",
            last_entries(owner.id) if owner else [],
        )
    for schema, tenant_id in sorted(live_schemas.items()):
        ledger.check(
            "no_live_tenant_without_schema",
            schema in schemas,
            f"tenant {tenant_id} is {db_state[tenant_id]} without its schema {schema}",
            last_entries(tenant_id),
        )

    # Every tenant where its ledger allows; every tenant in the ledger.
    uncertain = 0
    for tenant_id, tenant in run.tenants.items():
        if tenant.uncertain:
            uncertain += 1
            continue
        final = db_state.get(tenant_id, "MISSING")
        allowed = SETTLED.get(tenant.state, set())
        ledger.check(
            "final_state_allowed_by_ledger",
            final in allowed,
            f"tenant {tenant_id} ended {final}; its ledger ({tenant.state} last known) allows {sorted(allowed)}",
            last_entries(tenant_id),
        )
        if final in LIVE:
            missing = [seq for pid, seq in tenant.projects.items() if pid not in projects.get(tenant_id, set())]
            ledger.check(
                "acknowledged_write_readable",
                not missing,
                f"{len(missing)} acknowledged projects of {final} tenant {tenant_id} are gone",
                [ledger.entries[s] for s in missing],
            )
    unledgered = sorted(set(db_state) - set(run.tenants))
    ledger.check(
        "every_tenant_in_ledger",
        len(unledgered) <= len(run.unresolved_registrations),
        f"{len(unledgered)} tenants nobody's acknowledged registration made "
        f"({len(run.unresolved_registrations)} registrations unresolved): {unledgered[:5]}",
    )
    summary["tenants_uncertain"] = uncertain
    summary["tenants_unledgered"] = len(unledgered)

    # The event feed: in order, one event per acknowledged change, none for anything else.
    feed = await full_feed(run.apis)
    sequences = [e.sequence for e in feed]
    ledger.check(
        "feed_in_order",
        all(a < b for a, b in itertools.pairwise(sequences)),
        "the feed's sequences do not strictly grow",
    )
    by_request: dict[str, list[event_service_pb2.TenantEvent]] = {}
    by_tenant: dict[str, list[event_service_pb2.TenantEvent]] = {}
    for event in feed:
        if event.request_id:
            by_request.setdefault(event.request_id.lower(), []).append(event)
        by_tenant.setdefault(event.tenant_id, []).append(event)
    acknowledged: dict[str, Entry] = {}
    for entry in ledger.entries:
        if entry.acknowledged and entry.request_id and entry.rpc in EVENT_OF:
            acknowledged.setdefault(entry.request_id.lower(), entry)
    for request_id, entry in acknowledged.items():
        events = by_request.get(request_id, [])
        ledger.check(
            "one_event_per_acknowledged_change",
            [event_type(e) for e in events] == [EVENT_OF[entry.rpc]],
            f"{entry.rpc} {request_id} acknowledged; its events: {[(e.sequence, event_type(e)) for e in events]}",
            [entry],
        )
    for request_id, events in by_request.items():
        if request_id not in acknowledged:
            ledger.check(
                "no_event_without_acknowledgment",
                request_id in run.unresolved_request_ids,
                f"events {[(e.sequence, event_type(e)) for e in events]} carry request id {request_id} "
                "that no acknowledged call used",
                [e for e in ledger.entries if e.request_id.lower() == request_id],
            )
    for tenant_id in run.tenants:
        events = by_tenant.get(tenant_id, [])
        # The acknowledged changes' events in the order the client got the answers.
        ordered = [
            by_request[r][0].sequence for r, e in acknowledged.items() if e.tenant_id == tenant_id and r in by_request
        ]
        ledger.check(
            "events_in_acknowledgment_order",
            ordered == sorted(ordered),
            f"tenant {tenant_id}: events of acknowledged changes out of order: {ordered}",
            last_entries(tenant_id, 10),
        )
        final = db_state.get(tenant_id, "MISSING")
        last_state = state_name(events[-1].state) if events else "NONE"
        ledger.check(
            "feed_ends_in_tenant_state",
            last_state == final,
            f"tenant {tenant_id} is {final}; its last event says {last_state}",
            last_entries(tenant_id),
        )
        types = Counter(event_type(e) for e in events)
        ledger.check(
            "purged_once",
            types["PURGED"] == (1 if final == "DELETED" else 0),
            f"tenant {tenant_id} ({final}) has {types['PURGED']} PURGED events",
            last_entries(tenant_id),
        )
        ledger.check(
            "activated_once_per_provisioning",
            types["ACTIVATED"] <= 1 + types["PROVISIONING_RETRIED"],
            f"tenant {tenant_id} has {types['ACTIVATED']} ACTIVATED events",
            last_entries(tenant_id),
        )
    summary["events"] = len(feed)
    summary["events_by_type"] = dict(Counter(event_type(e) for e in feed))

    # Every watcher, resumed many times, saw the whole feed exactly once, in order.
    target = sequences[-1] if sequences else 0
    for watcher in watchers:
        watcher.finish(target)
    await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watchers)), 120)
    for watcher in watchers:
        seen = watcher.seen
        duplicates = sum(count - 1 for count in Counter(seen).values())
        lost = len(set(sequences) - set(seen))
        ledger.check(
            "watcher_saw_each_event_once",
            seen == sequences,
            f"{watcher.name}: {len(seen)} events seen of {len(sequences)} ({lost} missing, {duplicates} "
            f"duplicates, in order: {seen == sorted(seen)}) over {watcher.resumes} resumes",
        )
    summary["watchers"] = [
        {"name": w.name, "events": len(w.seen), "resumes": w.resumes, "disconnects": w.disconnects} for w in watchers
    ]
    return summary

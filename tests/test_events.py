"""TenantEventService over gRPC: the audit log lists what committed (and
nothing that rolled back), pages by sequence, and watches deliver the backlog,
then live events; watches are capped and end cleanly when the server stops.
(The ordering guarantee under concurrent commits is test_event_ordering.py.)"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api import events as events_module
from tenantry.v1 import event_service_pb2, event_service_pb2_grpc, tenant_pb2, tenant_service_pb2
from tests.stack import (
    Stack,
    expect_error,
    field_violations,
    register_active,
    registration,
    running_stack,
    wait_done,
)

if TYPE_CHECKING:
    from tenantry.v1.event_service_pb2_grpc import TenantEventServiceAsyncStub


def _events(stack: Stack) -> TenantEventServiceAsyncStub:
    return event_service_pb2_grpc.TenantEventServiceStub(stack.channel)


async def _next(watch: object) -> event_service_pb2.TenantEvent:
    """The next event of a WatchTenantEvents stream."""
    response = await watch.read()  # type: ignore[attr-defined]
    assert isinstance(response, event_service_pb2.WatchTenantEventsResponse), response
    return response.event


async def _event_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM tenant_events"))).scalar_one())


async def _last_sequence(stack: Stack) -> int:
    """The newest event's sequence (every event, all tenants)."""
    sequence = 0
    token = ""
    while True:
        page = await _events(stack).ListTenantEvents(
            event_service_pb2.ListTenantEventsRequest(page_size=500, page_token=token), timeout=10
        )
        if page.events:
            sequence = page.events[-1].sequence
        token = page.next_page_token
        if not token:
            return sequence


async def test_a_tenants_life_is_listed_in_order(stack: Stack) -> None:
    tenant = await register_active(stack.stubs)
    deleted = await stack.stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id))
    await stack.stubs.tenants.PurgeTenant(tenant_service_pb2.PurgeTenantRequest(tenant_id=tenant.id))
    await wait_done(stack.stubs, deleted.operation.name)
    listed = await _events(stack).ListTenantEvents(
        event_service_pb2.ListTenantEventsRequest(tenant_id=tenant.id), timeout=10
    )
    assert [(e.type, e.state) for e in listed.events] == [
        (event_service_pb2.TENANT_EVENT_TYPE_REGISTERED, tenant_pb2.TENANT_STATE_CREATING),
        (event_service_pb2.TENANT_EVENT_TYPE_ACTIVATED, tenant_pb2.TENANT_STATE_ACTIVE),
        (event_service_pb2.TENANT_EVENT_TYPE_DELETED, tenant_pb2.TENANT_STATE_DELETING),
        (event_service_pb2.TENANT_EVENT_TYPE_PURGED, tenant_pb2.TENANT_STATE_DELETED),
    ]
    sequences = [e.sequence for e in listed.events]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4
    assert all(e.tenant_id == tenant.id and e.event_time.seconds > 0 for e in listed.events)


async def test_a_change_that_rolled_back_leaves_no_event(stack: Stack, engine: AsyncEngine) -> None:
    taken = await register_active(stack.stubs)
    before = await _event_count(engine)
    await expect_error(
        stack.stubs.tenants.RegisterTenant(registration(taken.slug), timeout=10),
        grpc.StatusCode.ALREADY_EXISTS,
        "TENANT_SLUG_TAKEN",
    )
    assert await _event_count(engine) == before


async def test_pages_follow_the_sequence_and_tokens_belong_to_their_query(stack: Stack) -> None:
    tenant = await register_active(stack.stubs)
    events = _events(stack)
    first = await events.ListTenantEvents(
        event_service_pb2.ListTenantEventsRequest(tenant_id=tenant.id, page_size=1), timeout=10
    )
    second = await events.ListTenantEvents(
        event_service_pb2.ListTenantEventsRequest(tenant_id=tenant.id, page_size=1, page_token=first.next_page_token),
        timeout=10,
    )
    assert [e.type for e in (*first.events, *second.events)] == [
        event_service_pb2.TENANT_EVENT_TYPE_REGISTERED,
        event_service_pb2.TENANT_EVENT_TYPE_ACTIVATED,
    ]
    # The token of one tenant's listing is refused on another's, and a made-up one too.
    for token in (first.next_page_token, "bm90LWEtdG9rZW4"):
        error = await expect_error(
            events.ListTenantEvents(
                event_service_pb2.ListTenantEventsRequest(tenant_id=str(uuid.uuid4()), page_token=token), timeout=10
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
        assert "page_token" in field_violations(error)


async def test_a_watch_delivers_the_backlog_then_live_events(stack: Stack) -> None:
    tenant = await register_active(stack.stubs)
    start = (
        (
            await _events(stack).ListTenantEvents(
                event_service_pb2.ListTenantEventsRequest(tenant_id=tenant.id, page_size=1), timeout=10
            )
        )
        .events[0]
        .sequence
    )
    watch = _events(stack).WatchTenantEvents(
        event_service_pb2.WatchTenantEventsRequest(tenant_id=tenant.id, after_sequence=start - 1), timeout=60
    )
    backlog = [await _next(watch), await _next(watch)]
    assert [e.type for e in backlog] == [
        event_service_pb2.TENANT_EVENT_TYPE_REGISTERED,
        event_service_pb2.TENANT_EVENT_TYPE_ACTIVATED,
    ]
    deleted = await stack.stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id))
    live = await asyncio.wait_for(_next(watch), 10)
    assert (live.type, live.operation) == (
        event_service_pb2.TENANT_EVENT_TYPE_DELETED,
        deleted.operation.name,
    )
    assert live.sequence > backlog[-1].sequence
    watch.cancel()


async def test_a_watch_from_now_sees_only_what_commits_after_it(stack: Stack) -> None:
    await register_active(stack.stubs)
    before = await _last_sequence(stack)
    watch = _events(stack).WatchTenantEvents(event_service_pb2.WatchTenantEventsRequest(), timeout=60)
    # The stream is open once the server has read its starting point.
    await asyncio.sleep(0.5)
    registered = await stack.stubs.tenants.RegisterTenant(registration(), timeout=10)
    seen: list[event_service_pb2.TenantEvent] = []
    while not any(e.tenant_id == registered.tenant.id for e in seen):
        seen.append(await asyncio.wait_for(_next(watch), 10))
    # Nothing from before the watch (other tests' events may interleave after it).
    assert all(e.sequence > before for e in seen)
    ours = [e for e in seen if e.tenant_id == registered.tenant.id]
    assert [e.type for e in ours] == [event_service_pb2.TENANT_EVENT_TYPE_REGISTERED]
    watch.cancel()
    await wait_done(stack.stubs, registered.operation.name)


async def test_a_negative_after_sequence_is_invalid(stack: Stack) -> None:
    watch = _events(stack).WatchTenantEvents(event_service_pb2.WatchTenantEventsRequest(after_sequence=-1), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watches_are_capped_per_server(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "MAX_WATCHES", 2)
    after = await _last_sequence(stack)
    open_watches = [
        _events(stack).WatchTenantEvents(event_service_pb2.WatchTenantEventsRequest(after_sequence=after), timeout=30)
        for _ in range(2)
    ]
    # Each is registered once its first read is under way on the server.
    reads = [asyncio.ensure_future(w.read()) for w in open_watches]
    await asyncio.sleep(0.5)
    refused = _events(stack).WatchTenantEvents(
        event_service_pb2.WatchTenantEventsRequest(after_sequence=after), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await refused.read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for watch, read in zip(open_watches, reads, strict=True):
        watch.cancel()
        read.cancel()


async def test_open_watches_end_cleanly_when_the_server_stops(engine: AsyncEngine, temporal_client: Client) -> None:
    async with running_stack(engine=engine, client=temporal_client, with_worker=False) as own:
        watch = _events(own).WatchTenantEvents(event_service_pb2.WatchTenantEventsRequest(), timeout=60)
        await asyncio.sleep(0.5)
        stopping = asyncio.ensure_future(own.api.stop(30))
        # The stream ends with OK well within the grace period, and stop() returns.
        assert await asyncio.wait_for(watch.read(), 10) is grpc.aio.EOF  # type: ignore[attr-defined]
        assert await watch.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 10)

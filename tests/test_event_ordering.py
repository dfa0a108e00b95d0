"""The change feed's ordering guarantee, under the interleaving that breaks a
plain bigserial: many transactions take sequence numbers and commit (or roll
back) after random delays, while watchers disconnect and resume "after N".
Every watcher must end with exactly the committed events, in order, once each.
Real PostgreSQL; the watchers use the API's own feed."""

from __future__ import annotations

import asyncio
import random
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenant_api.events import EventFeed, TenantEvents
from tenantry.db.engine import create_session_factory
from tenantry.db.events import EventRecord, append_event
from tenantry.schema_names import schema_name_for
from tenantry.states import TenantEventType, TenantState
from tests.stack import page_tokens_for_tests

WRITERS = 12
TRANSACTIONS_PER_WRITER = 15
WATCHERS = 4


async def _tenant_rows(engine: AsyncEngine, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    async with engine.begin() as conn:
        user_id = uuid.uuid4()
        await conn.execute(
            text("INSERT INTO users (id, email, display_name) VALUES (:id, :email, 'Orderly')"),
            {"id": user_id, "email": f"{user_id}@order.test"},
        )
        for tenant_id in ids:
            await conn.execute(
                text(
                    "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name) "
                    "VALUES (:id, :slug, 'Orderly', :user_id, 'ACTIVE', :schema_name)"
                ),
                {
                    "id": tenant_id,
                    "slug": f"order-{tenant_id.hex[:12]}",
                    "user_id": user_id,
                    "schema_name": schema_name_for(tenant_id),
                },
            )
    return ids


async def test_resumed_watchers_see_every_committed_event_once_in_order(engine: AsyncEngine) -> None:
    tenants = await _tenant_rows(engine, 5)
    sessions = create_session_factory(engine)
    feed = EventFeed(engine)
    events = TenantEvents(sessions, feed, page_tokens_for_tests())
    async with sessions() as session:
        start = int((await session.execute(text("SELECT last_sequence FROM tenant_event_counter"))).scalar_one())
    committed: list[int] = []
    rolled_back = 0
    writers_done = asyncio.Event()

    async def writer(number: int) -> None:
        nonlocal rolled_back
        writer_rng = random.Random(number)
        for _ in range(TRANSACTIONS_PER_WRITER):
            async with engine.connect() as conn:
                transaction = await conn.begin()
                sequence = await append_event(
                    conn,
                    EventRecord(writer_rng.choice(tenants), TenantEventType.UPDATED, TenantState.ACTIVE, f"w{number}"),
                )
                # The window a bigserial would get wrong: the number is taken,
                # the commit comes later, others try to commit meanwhile.
                await asyncio.sleep(writer_rng.uniform(0, 0.01))
                if writer_rng.random() < 0.1:
                    await transaction.rollback()
                    rolled_back += 1
                else:
                    await transaction.commit()
                    committed.append(sequence)
            await asyncio.sleep(writer_rng.uniform(0, 0.005))

    async def watcher(seed: int) -> list[int]:
        watcher_rng = random.Random(seed)
        seen: list[int] = []
        after = start
        while True:
            # Take a few events, then disconnect and resume after the last one.
            wanted = watcher_rng.randint(1, 12)
            stream = events.watch(None, after)
            try:
                while wanted > 0:
                    try:
                        event = await asyncio.wait_for(anext(stream), 1.0)
                    except TimeoutError:
                        break  # caught up: disconnect, resume below
                    seen.append(event.sequence)
                    after = event.sequence
                    wanted -= 1
            finally:
                await stream.aclose()
            if writers_done.is_set() and after >= max(committed, default=start):
                return seen

    watchers = [asyncio.create_task(watcher(seed)) for seed in range(WATCHERS)]
    try:
        await asyncio.wait_for(asyncio.gather(*(writer(n) for n in range(WRITERS))), 120)
        writers_done.set()
        results = await asyncio.wait_for(asyncio.gather(*watchers), 60)
    finally:
        for task in watchers:
            task.cancel()
        await feed.close()

    expected = sorted(committed)
    assert rolled_back > 0 and len(expected) == WRITERS * TRANSACTIONS_PER_WRITER - rolled_back
    # Numbers are handed out in commit order without gaps: a rolled-back number is taken again.
    assert expected == list(range(start + 1, start + 1 + len(expected)))
    for seen in results:
        assert seen == expected


async def test_a_watch_from_now_skips_the_backlog_and_gets_live_events(engine: AsyncEngine) -> None:
    (tenant,) = await _tenant_rows(engine, 1)
    sessions = create_session_factory(engine)
    feed = EventFeed(engine)
    events = TenantEvents(sessions, feed, page_tokens_for_tests())
    async with engine.begin() as conn:
        await append_event(conn, EventRecord(tenant, TenantEventType.UPDATED, TenantState.ACTIVE, "before"))
    stream = events.watch(tenant, None)
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.3)  # the watch has read its starting point and waits
    assert not first.done()
    async with engine.begin() as conn:
        live = await append_event(conn, EventRecord(tenant, TenantEventType.UPDATED, TenantState.ACTIVE, "after"))
    event = await asyncio.wait_for(first, 5)
    assert (event.sequence, event.actor) == (live, "after")
    await stream.aclose()
    await feed.close()


async def test_closing_the_feed_ends_open_watches(engine: AsyncEngine) -> None:
    sessions = create_session_factory(engine)
    feed = EventFeed(engine)
    events = TenantEvents(sessions, feed, page_tokens_for_tests())

    async def drain() -> int:
        return len([event async for event in events.watch(None, None)])

    watch = asyncio.create_task(drain())
    await asyncio.sleep(0.3)
    await feed.close()
    assert await asyncio.wait_for(watch, 5) == 0

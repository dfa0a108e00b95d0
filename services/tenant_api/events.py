"""TenantEventService logic: the audit log, and watching it live.

Watchers are woken by PostgreSQL notifications (`tenantry_tenant_event`, sent
by the insert's trigger at commit) through one listening connection per
process; each watcher then reads what it has not seen from the table, in
sequence order, a bounded batch at a time. Nothing is queued per watcher, so a
slow consumer costs a cursor position, never memory: gRPC's flow control holds
its writes and it reads on from where it is when it catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Sequence

from sqlalchemy import URL, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tenant_api import pagination
from tenant_api.errors import resource_exhausted
from tenant_api.pg_listener import PgListener
from tenantry.db.events import EVENT_CHANNEL, LAST_SEQUENCE
from tenantry.db.models import TenantEvent

log = logging.getLogger(__name__)

# Events read per query while catching up.
WATCH_BATCH = 200
# Re-read at least this often even without a notification (a dropped listener).
RECHECK_SECONDS = 5.0
# Open watches per process; more get RESOURCE_EXHAUSTED.
MAX_WATCHES = 256


class EventFeed:
    """Fans PostgreSQL notifications out to this process's watchers."""

    def __init__(self, engine: AsyncEngine, listen_url: URL | None = None) -> None:
        """`listen_url`: where to LISTEN when not the engine's (a direct connection past a bouncer)."""
        self._listener = PgListener(listen_url or engine.url, EVENT_CHANNEL, self._on_notify)
        self._changed = asyncio.Event()
        self._closed = False
        self.open_watches = 0

    @property
    def closed(self) -> bool:
        return self._closed

    async def ensure_listening(self) -> None:
        await self._listener.ensure_listening()

    def _on_notify(self, _sequence: str = "") -> None:
        # Wake every current waiter; later waiters get a fresh Event.
        self._changed.set()
        self._changed = asyncio.Event()

    def next_change(self) -> asyncio.Event:
        """Set by the first notification (or close) after this call: take it
        before reading, wait on it after, and nothing falls in between."""
        return self._changed

    async def wait(self, change: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(change.wait(), timeout)

    async def close(self) -> None:
        """Ends every watch (cleanly, at its next wake-up) and stops listening."""
        self._closed = True
        self._on_notify()
        await self._listener.close()


# In sequence order, which is the order events became visible.
_KEYSET: pagination.Keyset[TenantEvent, int] = pagination.Keyset(
    position=None, key=TenantEvent.sequence, parse_key=int, cursor=lambda event: (None, event.sequence)
)


class TenantEvents:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], feed: EventFeed, page_tokens: pagination.PageTokens
    ) -> None:
        self._sessions = sessions
        self._feed = feed
        self._page_tokens = page_tokens

    async def list(self, tenant_id: uuid.UUID | None, size: int, token: str) -> tuple[list[TenantEvent], str]:
        request = pagination.PageRequest(size, token, f"events:{tenant_id or ''}", self._page_tokens)
        query = select(TenantEvent)
        if tenant_id is not None:
            query = query.where(TenantEvent.tenant_id == tenant_id)
        async with self._sessions() as session:
            rows = (await session.scalars(_KEYSET.select(query, request))).all()
        return _KEYSET.page(rows, request)

    async def _after(self, tenant_id: uuid.UUID | None, after: int, limit: int) -> Sequence[TenantEvent]:
        query = select(TenantEvent).where(TenantEvent.sequence > after).order_by(TenantEvent.sequence).limit(limit)
        if tenant_id is not None:
            query = query.where(TenantEvent.tenant_id == tenant_id)
        async with self._sessions() as session:
            return (await session.scalars(query)).all()

    async def watch(self, tenant_id: uuid.UUID | None, after: int | None) -> AsyncGenerator[TenantEvent, None]:
        """Events after `after` (None: from now), then live ones, until the
        server shuts down or the caller goes away."""
        feed = self._feed
        if feed.open_watches >= MAX_WATCHES:
            raise resource_exhausted("TOO_MANY_WATCHES", f"at most {MAX_WATCHES} open watches per server")
        feed.open_watches += 1
        try:
            await feed.ensure_listening()
            if after is None:
                async with self._sessions() as session:
                    after = int((await session.execute(LAST_SEQUENCE)).scalar_one())
            while not feed.closed:
                # Also brings a dropped listener back while watches are open.
                await feed.ensure_listening()
                change = feed.next_change()
                events = await self._after(tenant_id, after, WATCH_BATCH)
                for event in events:
                    yield event
                    after = event.sequence
                if len(events) < WATCH_BATCH:
                    await feed.wait(change, RECHECK_SECONDS)
        finally:
            feed.open_watches -= 1

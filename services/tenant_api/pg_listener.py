"""One LISTEN connection per channel and process, outside the pool.

Its users (WaitOperation, event watches) also re-read on a timer, so a listener
that cannot connect, or whose connection drops, costs latency, never
correctness: `ensure_listening` is called again at their next wake-up and
reconnects then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import URL

from tenantry.db.engine import asyncpg_dsn

log = logging.getLogger(__name__)


class PgListener:
    def __init__(self, url: URL, channel: str, on_notify: Callable[[str], None]) -> None:
        """`on_notify(payload)` runs on the event loop for every notification."""
        self._dsn = asyncpg_dsn(url)
        self._channel = channel
        self._on_notify = on_notify
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def ensure_listening(self) -> None:
        """Listening from here on if the database can be reached; cheap when it already is."""
        if self._connection is not None and not self._connection.is_closed():
            return
        async with self._lock:
            if self._closed or (self._connection is not None and not self._connection.is_closed()):
                return
            try:
                connection = await asyncpg.connect(self._dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("notifications on %s unavailable, falling back to re-reads: %s", self._channel, exc)
                return
            try:
                await connection.add_listener(self._channel, self._deliver)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("notifications on %s unavailable, falling back to re-reads: %s", self._channel, exc)
                await _close(connection)
                return
            self._connection = connection

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)

    async def close(self) -> None:
        """Stops listening for good (a concurrent ensure_listening connects no more)."""
        async with self._lock:
            self._closed = True
            if self._connection is not None:
                await _close(self._connection)
                self._connection = None


async def _close(connection: asyncpg.Connection) -> None:
    with contextlib.suppress(Exception):
        await connection.close(timeout=2)

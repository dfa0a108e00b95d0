"""OperationService logic, and waiting for operations without polling.

The database notifies `tenantry_operation_done` when an operation reaches a
final state (a trigger in the control-plane migration). One listening
connection per process wakes the waiters; a slow periodic re-read covers a
dropped listener connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenant_api import pagination
from tenant_api.errors import FieldViolation, invalid_fields, not_found, resource_exhausted
from tenant_api.pg_listener import PgListener
from tenantry.db.models import Operation
from tenantry.states import DONE_OPERATION_STATES, OperationKind, OperationState

log = logging.getLogger(__name__)

# An Operation's resource name is this prefix and its workflow id.
OPERATION_NAME_PREFIX = "operations/"
NOTIFY_CHANNEL = "tenantry_operation_done"
# Re-read at least this often even without a notification.
RECHECK_SECONDS = 5.0
# Open WaitOperation calls per process; beyond it RESOURCE_EXHAUSTED
# TOO_MANY_WAITS at once, before any database read. Each open wait re-reads
# its operation every RECHECK_SECONDS: 128 waits are ~26 reads/s at most.
MAX_WAITS = 128
# Waits' reads of the shared connection pool (10 + 10 overflow) in flight at
# once: a burst of waits starting (or waking) together queues here, not in the
# pool, so the pool always has connections left for every other call.
MAX_CONCURRENT_WAIT_READS = 4

# Listing order: newest first, ties broken by workflow id
# (ix_workflow_executions_create_time_workflow_id).
_KEYSET: pagination.Keyset[Operation, str] = pagination.Keyset(
    Operation.create_time,
    Operation.workflow_id,
    str,
    lambda operation: (operation.create_time, operation.workflow_id),
    descending=True,
)


def workflow_id_from_name(name: str) -> str:
    workflow_id = name.removeprefix(OPERATION_NAME_PREFIX)
    # Not printable (NUL, control characters): never one of our ids, and NUL
    # cannot even be sent to PostgreSQL.
    if (
        not name.startswith(OPERATION_NAME_PREFIX)
        or not workflow_id
        or len(workflow_id) > 200
        or not workflow_id.isprintable()
    ):
        raise invalid_fields([FieldViolation("name", "must be operations/{workflow_id}")])
    return workflow_id


class OperationNotifications:
    """Fans PostgreSQL notifications out to in-process waiters."""

    def __init__(self, database_url: URL) -> None:
        """`database_url`: the engine's (`engine.url`); the listener connects with asyncpg itself."""
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._listener = PgListener(database_url, NOTIFY_CHANNEL, self._on_notify)

    async def ensure_listening(self) -> None:
        await self._listener.ensure_listening()

    def _on_notify(self, workflow_id: str) -> None:
        for future in self._waiters.pop(workflow_id, set()):
            if not future.done():
                future.set_result(None)

    def subscribe(self, workflow_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[workflow_id].add(future)
        return future

    def unsubscribe(self, workflow_id: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(workflow_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[workflow_id]

    async def close(self) -> None:
        await self._listener.close()


class Operations:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        notifications: OperationNotifications,
        page_tokens: pagination.PageTokens,
        *,
        max_waits: int = MAX_WAITS,
    ) -> None:
        self._sessions = sessions
        self._notifications = notifications
        self._page_tokens = page_tokens
        self.max_waits = max_waits
        self._open_waits = 0
        self._wait_reads = asyncio.Semaphore(MAX_CONCURRENT_WAIT_READS)

    @property
    def open_waits(self) -> int:
        """WaitOperation calls admitted and not answered yet."""
        return self._open_waits

    async def get(self, name: str) -> Operation:
        workflow_id = workflow_id_from_name(name)
        async with self._sessions() as session:
            operation = (
                await session.scalars(select(Operation).where(Operation.workflow_id == workflow_id))
            ).one_or_none()
        if operation is None:
            raise not_found("OPERATION_NOT_FOUND", f"operation {name} not found", name=name)
        return operation

    async def list(
        self,
        tenant_id: uuid.UUID | None,
        state: OperationState | None,
        size: int,
        token: str,
        *,
        kind: OperationKind | None = None,
    ) -> tuple[list[Operation], str]:
        # The filters are part of the page token's scope: a token only
        # continues the listing it came from.
        scope = f"operations:{tenant_id or ''}:{state or ''}:{kind or ''}"
        request = pagination.PageRequest(size, token, scope, self._page_tokens)
        query = select(Operation)
        if kind is not None:
            query = query.where(Operation.kind == kind)
        if tenant_id is not None:
            query = query.where(Operation.tenant_id == tenant_id)
        if state is not None:
            query = query.where(Operation.state == state)
        async with self._sessions() as session:
            operations = list((await session.scalars(_KEYSET.select(query, request))).all())
        return _KEYSET.page(operations, request)

    async def wait(self, name: str, timeout_seconds: float) -> Operation:
        """The operation once done, or as it is after `timeout_seconds` (the
        servicer caps that). At most `max_waits` calls wait at once."""
        workflow_id = workflow_id_from_name(name)
        if self._open_waits >= self.max_waits:
            raise resource_exhausted(
                "TOO_MANY_WAITS",
                f"at most {self.max_waits} open WaitOperation calls per server, retry later or poll GetOperation",
                limit=str(self.max_waits),
            )
        self._open_waits += 1
        try:
            return await self._wait(name, workflow_id, timeout_seconds)
        finally:
            self._open_waits -= 1

    async def _wait(self, name: str, workflow_id: str, timeout_seconds: float) -> Operation:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        await self._notifications.ensure_listening()
        while True:
            # Subscribe before reading, so a notification between the read and
            # the wait is not lost.
            fired = self._notifications.subscribe(workflow_id)
            try:
                async with self._wait_reads:
                    operation = await self.get(name)
                remaining = deadline - loop.time()
                if OperationState(operation.state) in DONE_OPERATION_STATES or remaining <= 0:
                    return operation
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fired, min(remaining, RECHECK_SECONDS))
            finally:
                self._notifications.unsubscribe(workflow_id, fired)

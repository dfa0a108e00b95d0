"""Per-step bounds on lock waits, for the worker's transactions.

Every session already starts with the engine's `lock_timeout`
(tenantry.db.engine.session_settings); each activity transaction sets it
again, locally, as its first statement, so the bound holds even where startup
settings do not reach the server session (a transaction-pooling proxy) and
whatever an earlier transaction on the pooled connection set.

A lock wait that runs out fails the statement with SQLSTATE 55P03
(lock_not_available); `is_lock_timeout` recognises it, and the worker re-runs
the whole (idempotent, one-transaction) activity after a pause instead of
failing the attempt (provisioner_worker.lock_waits).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.engine import LOCK_TIMEOUT_OPTION, milliseconds
from tenantry.pg_errors import LOCK_NOT_AVAILABLE, pg_error
from tenantry.settings import DEFAULT_LOCK_TIMEOUT_SECONDS


async def bound_lock_waits(conn: AsyncConnection) -> None:
    """`SET LOCAL lock_timeout` to the engine's bound, for the rest of `conn`'s
    transaction. Call it first thing in the transaction."""
    configured = conn.sync_engine.get_execution_options().get(LOCK_TIMEOUT_OPTION)
    ms = int(configured) if configured is not None else milliseconds(DEFAULT_LOCK_TIMEOUT_SECONDS)
    # SET takes no bind parameters; `ms` is an int.
    await conn.execute(text(f"SET LOCAL lock_timeout = {ms}"))


def is_lock_timeout(exc: BaseException) -> bool:
    """True for a statement that gave up waiting for a lock (55P03), at any
    depth of `exc`'s cause chain."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return False
        if isinstance(current, DBAPIError) and pg_error(current).sqlstate == LOCK_NOT_AVAILABLE:
            return True
        if getattr(current, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return True
        current = current.__cause__ or current.__context__
    return False

"""A tenant-scoped call is one database transaction, on one pooled connection.

The tenant gate opens it together with its admission check (one round trip:
`BEGIN; SELECT ...`), the servicer works in a session on it, and it commits when
the call succeeds, before the response leaves, or rolls back otherwise.
SQLAlchemy runs in AUTOCOMMIT on that connection, so it never begins or ends a
transaction itself: a servicer's `session.begin()` marks a unit of work inside
the call's transaction. The driver's statements here go through `driver_call`,
so their failures read like SQLAlchemy's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from tenant_api.errors import unavailable
from tenantry.db.engine import driver_of
from tenantry.pg_errors import UNAVAILABLE_SQLSTATE_PREFIXES

T = TypeVar("T")


async def driver_call(conn: AsyncConnection, driver: asyncpg.Connection, call: Awaitable[T]) -> T:
    """Awaits a call on `conn`'s driver connection. Failures that mean the
    database is unreachable are UNAVAILABLE, as they would be through
    SQLAlchemy; anything else propagates."""
    try:
        return await call
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        if driver.is_closed():
            # Lost connection: SQLAlchemy, meeting it too, invalidates the whole
            # pool as on any disconnect and raises DBAPIError (UNAVAILABLE).
            await conn.exec_driver_sql("SELECT 1")
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if not (driver.is_closed() or isinstance(exc, OSError) or sqlstate.startswith(UNAVAILABLE_SQLSTATE_PREFIXES)):
            raise
        await conn.invalidate(exc)
        raise unavailable("DATABASE_UNAVAILABLE", "the database is unavailable, retry later") from exc


async def unscoped_connection(conn: AsyncConnection) -> asyncpg.Connection:
    """Prepares a freshly checked-out `conn` for a call transaction: SQLAlchemy
    in AUTOCOMMIT from here on. Returns its driver connection."""
    await conn.execution_options(isolation_level="AUTOCOMMIT")
    return await driver_of(conn)


async def open_transaction(conn: AsyncConnection, driver: asyncpg.Connection, sql: str = "BEGIN") -> str:
    """Runs `sql`, which opens the call's transaction (and may check something:
    its status is returned); on any failure no transaction is left open."""
    try:
        return await driver_call(conn, driver, driver.execute(sql))
    except BaseException:
        await abandon(conn, driver)
        raise


@asynccontextmanager
async def call_transaction(
    sessions: async_sessionmaker[AsyncSession], conn: AsyncConnection, driver: asyncpg.Connection, schema_name: str
) -> AsyncIterator[AsyncSession]:
    """A session in the transaction open on `conn` (open_transaction), whose schema-less
    tables resolve to `schema_name`; commits when the body succeeds. Execution
    options live on this Connection object only, never on the pooled DBAPI
    connection, so nothing carries over to the next checkout."""
    session = sessions(bind=conn)
    committed = False
    try:
        await conn.execution_options(schema_translate_map={None: schema_name})
        yield session
        await session.close()
        await driver_call(conn, driver, driver.execute("COMMIT"))
        committed = True
    finally:
        if not committed:
            await session.close()
            await abandon(conn, driver)


async def abandon(conn: AsyncConnection, driver: asyncpg.Connection) -> None:
    """Ends a call's transaction after a failure or a cancellation, whatever
    state the connection is in: rolled back, or else invalidated, so the pool
    never hands out a connection inside a transaction."""
    if driver.is_closed():
        await conn.invalidate()
        return
    if not driver.is_in_transaction():
        return
    try:
        await driver.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - e.g. a cancelled statement still in progress: discard the connection
        await conn.invalidate()

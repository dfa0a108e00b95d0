"""A tenant-scoped call is one database transaction, on one pooled connection.

The tenant gate opens it together with its admission check (one round trip:
`BEGIN; SELECT ...`), the servicer works in the scope's session on it, and it
commits when the call succeeds, before the response leaves, or rolls back
otherwise. The transaction lives on the driver connection: SQLAlchemy runs in
AUTOCOMMIT there and could not begin or end it if it tried.

The rule for tenant-scoped code (yours too, when you add a tenant-scoped
service): use `TenantScope.session` (a `CallSession`) as it comes, already
inside the call's transaction, and never begin, commit or roll back. Everything
the call does commits together when it returns, or none of it does when it
raises, so raise to undo. `CallSession` refuses `begin()`, `begin_nested()`,
`commit()` and `rollback()` with `CallTransactionError`, because in this
session they could only pretend. Pending ORM changes (`session.add`) are
flushed before the commit; call `await session.flush()` yourself where you want
a constraint violation raised at a point you handle it. A statement that fails
aborts the whole transaction (PostgreSQL), so after a database error the call
can only raise; there are no savepoints here. Do not open sessions or
connections of your own from the engine for tenant data: they are outside the
call's transaction and outside the tenant's schema.

The driver's statements here go through `driver_call`, so their failures read
like SQLAlchemy's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import NoReturn, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from tenant_api.errors import unavailable
from tenantry.db.engine import driver_of
from tenantry.pg_errors import UNAVAILABLE_SQLSTATE_PREFIXES

T = TypeVar("T")


class CallTransactionError(RuntimeError):
    """Tenant-scoped code tried to begin or end a transaction itself."""


class CallSession(AsyncSession):
    """The session of a tenant-scoped call: already inside the call's
    transaction, which the tenant gate ends. See this module's docstring."""

    def _refuse(self, what: str) -> NoReturn:
        raise CallTransactionError(
            f"session.{what}() in a tenant-scoped call: the call is one transaction, already open, that commits "
            "when the call returns and rolls back when it raises; use the session as it is (see "
            "tenant_api.call_transaction)"
        )

    def begin(self) -> NoReturn:
        self._refuse("begin")

    def begin_nested(self) -> NoReturn:
        self._refuse("begin_nested")

    async def commit(self) -> NoReturn:
        self._refuse("commit")

    async def rollback(self) -> NoReturn:
        self._refuse("rollback")


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
    conn: AsyncConnection, driver: asyncpg.Connection, schema_name: str
) -> AsyncIterator[CallSession]:
    """A session in the transaction open on `conn` (open_transaction), whose schema-less
    tables resolve to `schema_name`; flushes and commits when the body succeeds.
    Execution options live on this Connection object only, never on the pooled
    DBAPI connection, so nothing carries over to the next checkout."""
    session = CallSession(bind=conn)
    committed = False
    try:
        await conn.execution_options(schema_translate_map={None: schema_name})
        yield session
        await session.flush()
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

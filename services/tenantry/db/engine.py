"""Engine and session factories shared by both services."""

from __future__ import annotations

from typing import Any, cast

import asyncpg
from sqlalchemy import URL, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from tenantry.tracing import instrument_engine

# Each PostgreSQL backend keeps the catalog entries of every tenant table it has
# touched; recycling pooled connections bounds that memory.
POOL_RECYCLE_SECONDS = 300
# Deadline for any single statement, so one stuck query cannot pin a caller.
COMMAND_TIMEOUT_SECONDS = 30
CONNECT_TIMEOUT_SECONDS = 5


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=POOL_RECYCLE_SECONDS,
        # No pre-ping: with asyncpg it costs three round trips per checkout. A
        # connection found dead invalidates the pool, and the one call that hit
        # it answers UNAVAILABLE.
        pool_timeout=10,
        connect_args={
            "command_timeout": COMMAND_TIMEOUT_SECONDS,
            "timeout": CONNECT_TIMEOUT_SECONDS,
        },
    )
    event.listen(engine.sync_engine, "checkout", _refuse_connection_inside_a_transaction)
    # SQL spans when this process traces (nothing otherwise).
    instrument_engine(engine)
    return engine


def _refuse_connection_inside_a_transaction(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Belt and braces for transactions opened on the driver directly (a
    tenant-scoped call's): one that was somehow checked in still open is
    discarded, and the pool hands out another (SQLAlchemy's checkout protocol)."""
    if dbapi_connection.driver_connection.is_in_transaction():
        raise DisconnectionError("connection checked in inside a transaction")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def driver_of(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn`, for what SQLAlchemy cannot do in
    one round trip (several statements in one message; see its callers)."""
    return cast("asyncpg.Connection", (await conn.get_raw_connection()).driver_connection)


def asyncpg_dsn(url: URL | str) -> str:
    """The DSN asyncpg takes for an engine URL (for connections SQLAlchemy does
    not manage: LISTEN, benchmark floors)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

"""Engine and session factories shared by both services."""

from __future__ import annotations

from typing import Any, cast

import asyncpg
from sqlalchemy import URL, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from tenantry.settings import DbTimeouts
from tenantry.tracing import instrument_engine

# Each PostgreSQL backend keeps the catalog entries of every tenant table it has
# touched; recycling pooled connections bounds that memory.
POOL_RECYCLE_SECONDS = 300
CONNECT_TIMEOUT_SECONDS = 5
# The client gives up on a statement this long after the server's own
# statement_timeout would have ended it: normally the server's error (57014)
# arrives first; this catches a server (or network) that stopped answering.
COMMAND_TIMEOUT_MARGIN_SECONDS = 5
# Server-side TCP keepalives: a client host that vanishes without closing its
# socket (power loss, a partitioned node) is noticed after about
# idle + interval * count seconds of silence and its session ends, releasing
# its locks; TCP_USER_TIMEOUT does the same while unacknowledged data is in
# flight (keepalives do not fire then). PostgreSQL ignores all four on a Unix
# socket, where the kernel closes the session with the process. (asyncpg has
# no client-side keepalive option; the client's waits are bounded by its
# command timeout instead.)
TCP_KEEPALIVES_IDLE_SECONDS = 30
TCP_KEEPALIVES_INTERVAL_SECONDS = 10
TCP_KEEPALIVES_COUNT = 3
TCP_USER_TIMEOUT_MS = 60_000
# A backend notices that its client went away only when it next reads from or
# writes to the socket: one waiting for a lock (or running a long statement)
# for a client that was killed keeps its transaction, and every lock that
# holds, until the statement ends. This makes it poll the socket while a
# statement runs and end the session once the kernel reports the connection
# closed (a killed process at once; a vanished host once the keepalives above
# give up). PostgreSQL 14 or later. The worker's sessions only
# (`check_client_connection`): they hold tenant row locks and uncommitted DDL;
# the API's statements are short and its statement_timeout ends a killed
# client's wait within 30 s (and with the check on, the API's wait-storm test
# missed its health deadlines under load).
CLIENT_CONNECTION_CHECK_INTERVAL_MS = 2_000
# Execution option carrying the engine's lock timeout, for the per-step
# `SET LOCAL lock_timeout` of tenantry.db.timeouts.
LOCK_TIMEOUT_OPTION = "tenantry_lock_timeout_ms"


def milliseconds(seconds: float) -> int:
    """`seconds` as PostgreSQL timeout milliseconds; never 0, which means "no limit"."""
    return max(1, round(seconds * 1000))


def session_settings(timeouts: DbTimeouts, *, check_client_connection: bool = False) -> dict[str, str]:
    """The server settings every session of ours starts with (asyncpg
    `server_settings`, sent in the startup packet: no extra round trip)."""
    settings = {
        "statement_timeout": str(milliseconds(timeouts.statement_seconds)),
        "lock_timeout": str(milliseconds(timeouts.lock_seconds)),
        "idle_in_transaction_session_timeout": str(milliseconds(timeouts.idle_in_transaction_seconds)),
        "tcp_keepalives_idle": str(TCP_KEEPALIVES_IDLE_SECONDS),
        "tcp_keepalives_interval": str(TCP_KEEPALIVES_INTERVAL_SECONDS),
        "tcp_keepalives_count": str(TCP_KEEPALIVES_COUNT),
        "tcp_user_timeout": str(TCP_USER_TIMEOUT_MS),
    }
    if check_client_connection:
        settings["client_connection_check_interval"] = str(CLIENT_CONNECTION_CHECK_INTERVAL_MS)
    return settings


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    timeouts: DbTimeouts | None = None,
    check_client_connection: bool = False,
) -> AsyncEngine:
    """An engine whose every session is bounded by `timeouts` (the process's
    settings.db_timeouts; None: the defaults) and the keepalives above;
    `check_client_connection` for the worker (see CLIENT_CONNECTION_CHECK_INTERVAL_MS)."""
    timeouts = timeouts or DbTimeouts()
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
            "command_timeout": timeouts.statement_seconds + COMMAND_TIMEOUT_MARGIN_SECONDS,
            "timeout": CONNECT_TIMEOUT_SECONDS,
            "server_settings": session_settings(timeouts, check_client_connection=check_client_connection),
        },
        execution_options={LOCK_TIMEOUT_OPTION: milliseconds(timeouts.lock_seconds)},
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

"""Does this process's share of PostgreSQL's connections fit? Checked once at start.

A process may open up to pool_size + max_overflow pooled connections (per
engine; each service has one) plus its direct ones (the API's LISTEN
connections, API_LISTEN_CONNECTIONS). PostgreSQL admits max_connections client
backends, of which superuser_reserved_connections (and, from 16,
reserved_connections) are kept for privileged roles. So a process fits when

    pool_size + max_overflow + direct
        <= max_connections - superuser_reserved_connections - reserved_connections - in use now

"In use now" counts the client backends open at this moment (other replicas'
pools, migrations, psql sessions), not this check's own connection. A process
cannot know how many peers will start after it, nor how far their pools will
grow later (pools are lazy), so this is a necessary condition, not a
sufficient one: the fleet fits only when the sum over every process fits, e.g.
with the defaults 2 APIs x (10 + 10 + 2) + 3 workers x (10 + 20) = 134 > 97
(max_connections 100 - 3 reserved): see the README's "Sizing connections".

The count is exact when the role may see every session (superuser or
pg_read_all_stats); otherwise other roles' sessions are hidden from it and the
check is correspondingly lenient. A database that cannot be reached at start is
not a budget problem: the check is skipped with a warning and the process
starts as before (its pool retries).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from tenantry.db.engine import CONNECT_TIMEOUT_SECONDS, asyncpg_dsn

log = logging.getLogger(__name__)

# tenant_api: the operations waiter's and the event watches' PgListener, one
# direct connection each, outside the pool.
API_LISTEN_CONNECTIONS = 2

_BUDGET_SQL = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())::int
"""


@dataclass(frozen=True)
class ConnectionBudget:
    max_connections: int
    superuser_reserved: int
    reserved: int
    in_use: int

    @property
    def free(self) -> int:
        return self.max_connections - self.superuser_reserved - self.reserved - self.in_use


@dataclass(frozen=True)
class ConnectionNeed:
    """What one process may open at most."""

    pool_size: int
    max_overflow: int
    direct: int = 0

    @property
    def total(self) -> int:
        return self.pool_size + self.max_overflow + self.direct


async def read_budget(database_url: str) -> ConnectionBudget:
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        row = await connection.fetchrow(_BUDGET_SQL, timeout=CONNECT_TIMEOUT_SECONDS)
    finally:
        await connection.close(timeout=2)
    assert row is not None
    return ConnectionBudget(*row)


def refusal(process: str, need: ConnectionNeed, budget: ConnectionBudget) -> str | None:
    """None when `need` fits, else the one line the process exits with."""
    if need.total <= budget.free:
        return None
    direct = f" + {need.direct} LISTEN" if need.direct else ""
    reserved = budget.superuser_reserved + budget.reserved
    return (
        f"{process}: its database pool cannot fit: it may open {need.total} connections "
        f"(TENANTRY_DB_POOL_SIZE {need.pool_size} + TENANTRY_DB_MAX_OVERFLOW {need.max_overflow}{direct}) "
        f"but only {max(budget.free, 0)} are free (max_connections {budget.max_connections} - {reserved} reserved "
        f"- {budget.in_use} in use); lower the pool settings or raise max_connections"
    )


async def check_connection_budget(process: str, database_url: str, need: ConnectionNeed) -> None:
    """Exits 1 with one line on stderr when `need` cannot fit; see the module docstring."""
    try:
        budget = await read_budget(database_url)
    except asyncpg.TooManyConnectionsError:
        message: str | None = (
            f"{process}: its database pool cannot fit: PostgreSQL already refuses new connections "
            f"(too many clients) and this process may open {need.total}; lower the pool settings or raise "
            "max_connections"
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("connection budget not checked: the database cannot be reached now: %s", exc)
        return
    else:
        message = refusal(process, need, budget)
        if message is None:
            log.info("connection budget: this process may open %d of %d free connections", need.total, budget.free)
            return
    print(message, file=sys.stderr)
    raise SystemExit(1)


async def check_shard_budgets(
    process: str, control_plane_url: str, shards: Mapping[str, str], need: ConnectionNeed
) -> None:
    """check_connection_budget on each shard's database that is not the
    control plane's (a process opens one pool per such shard, sized like the
    control plane's; its direct connections go to the control plane only).
    A refusal names the shard; an unreachable shard is skipped with a warning
    (a shard that is down must not keep the process from serving the others)."""
    pool = ConnectionNeed(need.pool_size, need.max_overflow)
    for name, url in sorted(shards.items()):
        if url != control_plane_url:
            await check_connection_budget(f"{process} (shard {name})", url, pool)

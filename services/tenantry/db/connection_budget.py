"""Does this process's share of PostgreSQL's connections fit? Checked once at start.

A process may open up to pool_size + max_overflow pooled connections per
engine (one for the control plane, one per other shard database: see
check_shard_budgets) plus its direct ones (the API's LISTEN
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

import dataclasses
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from sqlalchemy import make_url

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
    """What one process may open at most on one server: `pools` pools of
    pool_size + max_overflow each (one per database of that server it uses:
    the control plane's, each shard's), plus `direct` connections."""

    pool_size: int
    max_overflow: int
    direct: int = 0
    pools: int = 1

    @property
    def total(self) -> int:
        return self.pools * (self.pool_size + self.max_overflow) + self.direct


async def read_budget(database_url: str) -> ConnectionBudget:
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        row = await connection.fetchrow(_BUDGET_SQL, timeout=CONNECT_TIMEOUT_SECONDS)
    finally:
        await connection.close(timeout=2)
    assert row is not None
    return ConnectionBudget(*row)


def refusal(process: str, need: ConnectionNeed, budget: ConnectionBudget, where: str = "") -> str | None:
    """None when `need` fits, else the one line the process exits with.
    `where`: which databases the pools are for (e.g. "shard b"), when not
    just the control plane's."""
    if need.total <= budget.free:
        return None
    direct = f" + {need.direct} LISTEN" if need.direct else ""
    pools = f"TENANTRY_DB_POOL_SIZE {need.pool_size} + TENANTRY_DB_MAX_OVERFLOW {need.max_overflow}"
    if need.pools > 1:
        pools = f"{need.pools} pools x ({pools})"
    reserved = budget.superuser_reserved + budget.reserved
    subject = ("its database pools" if need.pools > 1 else "its database pool") + _for(where)
    return (
        f"{process}: {subject} cannot fit: it may open {need.total} connections "
        f"({pools}{direct}) "
        f"but only {max(budget.free, 0)} are free (max_connections {budget.max_connections} - {reserved} reserved "
        f"- {budget.in_use} in use); lower the pool settings or raise max_connections"
    )


async def check_connection_budget(process: str, database_url: str, need: ConnectionNeed, where: str = "") -> None:
    """Exits 1 with one line on stderr when `need` cannot fit; see the module
    docstring. `where`: as for refusal."""
    try:
        budget = await read_budget(database_url)
    except asyncpg.TooManyConnectionsError:
        subject = ("its database pools" if need.pools > 1 else "its database pool") + _for(where)
        message: str | None = (
            f"{process}: {subject} cannot fit: PostgreSQL already refuses new connections "
            f"(too many clients) and this process may open {need.total}; lower the pool settings or raise "
            "max_connections"
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("connection budget%s not checked: the database cannot be reached now: %s", _for(where), exc)
        return
    else:
        message = refusal(process, need, budget, where)
        if message is None:
            log.info(
                "connection budget%s: this process may open %d of %d free connections",
                _for(where),
                need.total,
                budget.free,
            )
            return
    print(message, file=sys.stderr)
    raise SystemExit(1)


def _for(where: str) -> str:
    return f" for {where}" if where else ""


def server_of(database_url: str) -> tuple[str, int]:
    """Which PostgreSQL server a URL names, as far as the URL tells: (host or
    socket directory, port). Databases of one server share its max_connections."""
    url = make_url(database_url)
    host = url.host or str(url.query.get("host", "")) or "localhost"
    return host, url.port or 5432


async def check_shard_budgets(
    process: str,
    control_plane_url: str,
    control_plane_need: ConnectionNeed,
    shards: Mapping[str, str],
) -> None:
    """check_connection_budget for a process with one pool per database:
    the control plane's (`control_plane_need`, which the shards on the
    control plane's own URL share) and one more pool of the same size per
    other shard database (`shards`: TENANTRY_SHARDS, name -> URL). Pools on one server
    add up and are checked together, once per server; the first that cannot
    fit exits 1 with one line naming its shards."""
    remote = sorted((name, url) for name, url in shards.items() if url != control_plane_url)
    control_server = server_of(control_plane_url)
    servers: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for name, url in remote:
        servers.setdefault(server_of(url), []).append((name, url))
    together = servers.pop(control_server, [])
    names = ", ".join(f"shard {name}" for name, _ in together)
    await check_connection_budget(
        process,
        control_plane_url,
        dataclasses.replace(control_plane_need, pools=control_plane_need.pools + _pools(together)),
        f"the control plane and {names}" if together else "",
    )
    shard_need = ConnectionNeed(control_plane_need.pool_size, control_plane_need.max_overflow)
    for group in servers.values():
        names = ", ".join(f"shard {name}" for name, _ in group)
        await check_connection_budget(process, group[0][1], dataclasses.replace(shard_need, pools=_pools(group)), names)


def _pools(shards: list[tuple[str, str]]) -> int:
    """One pool per database (tenantry.db.shards.Shards): shards naming one URL share it."""
    return len({url for _, url in shards})

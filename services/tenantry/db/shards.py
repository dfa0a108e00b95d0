"""The databases that hold tenant schemas (TENANTRY_SHARDS), one pool each per
process.

The control plane (tenants, operations, events) stays in
TENANTRY_DATABASE_URL. A shard whose URL is the control plane's own is served
by the control plane's engine (`Shard.local`): its tenant work and the
control-plane change it belongs to run in ONE transaction, as before shards
existed. Any other shard has its own engine, and work that spans both
databases follows the two-database protocol of `shard_transaction`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tenantry.settings import DEFAULT_SHARD


class UnknownShardError(LookupError):
    """A shard name this process's TENANTRY_SHARDS does not list."""

    def __init__(self, name: str) -> None:
        super().__init__(f"shard {name!r} is not configured in TENANTRY_SHARDS")
        self.name = name


@dataclass(frozen=True)
class Shard:
    name: str
    engine: AsyncEngine
    # The control plane's own database and engine.
    local: bool


class Shards:
    """Name -> Shard for one process. `make_engine(url)` builds the engine of
    each shard that is not the control plane's database (same timeouts and
    pool settings as the control plane's: see tenantry.db.engine)."""

    def __init__(
        self,
        control_plane: AsyncEngine,
        urls: Mapping[str, str],
        make_engine: Callable[[str], AsyncEngine],
        *,
        control_plane_url: str | None = None,
    ) -> None:
        local_url = control_plane_url or control_plane.url.render_as_string(hide_password=False)
        self._shards: dict[str, Shard] = {}
        # One pool per database: two names for one URL share it.
        engines: dict[str, AsyncEngine] = {}
        for name, url in sorted(urls.items()):
            if url == local_url:
                self._shards[name] = Shard(name, control_plane, local=True)
            else:
                if url not in engines:
                    engines[url] = make_engine(url)
                self._shards[name] = Shard(name, engines[url], local=False)
        if DEFAULT_SHARD not in self._shards:
            self._shards[DEFAULT_SHARD] = Shard(DEFAULT_SHARD, control_plane, local=True)

    @classmethod
    def single(cls, control_plane: AsyncEngine) -> Shards:
        """The one `default` shard on the control plane's database (no TENANTRY_SHARDS)."""
        return cls(control_plane, {}, _no_engine)

    def __getitem__(self, name: str) -> Shard:
        try:
            return self._shards[name]
        except KeyError:
            raise UnknownShardError(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._shards

    @property
    def names(self) -> list[str]:
        return list(self._shards)

    @property
    def local_names(self) -> list[str]:
        """The shards on the control plane's own database."""
        return [s.name for s in self._shards.values() if s.local]

    def remote(self) -> list[Shard]:
        return [s for s in self._shards.values() if not s.local]

    def database_of(self, name: str) -> str:
        """Which database holds shard `name`'s schemas: "" for the control
        plane's, else its URL (password hidden); shards that share one say so."""
        shard = self[name]
        return "" if shard.local else shard.engine.url.render_as_string(hide_password=True)

    async def dispose(self) -> None:
        """Closes the pools this object opened (not the control plane's)."""
        for engine in {id(s.engine): s.engine for s in self.remote()}.values():
            await engine.dispose()


def _no_engine(url: str) -> AsyncEngine:
    raise AssertionError("a single-shard deployment opens no other engine")


@asynccontextmanager
async def shard_transaction(control_plane: AsyncConnection, shard: Shard) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction on `shard` for tenant-schema work that
    belongs with the control-plane transaction open on `control_plane`.

    Local shard: `control_plane` itself: one transaction, all or nothing.
    Remote shard: a transaction of its own, committed when the block ends,
    BEFORE the caller commits the control plane. The protocol every caller
    follows: lock the tenant row in the control plane first (so the steps of
    one tenant never interleave, across processes too), do the shard work,
    commit it, then commit the control-plane change. A crash between the two
    commits leaves the shard work done and the control plane not yet saying
    so; every step is written to find its own shard work already done and
    finish the control-plane part (the schema's alembic stamp, a schema that
    exists or not, tell it)."""
    if shard.local:
        yield control_plane
        return
    async with shard.engine.begin() as conn:
        yield conn

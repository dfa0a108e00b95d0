"""How much work each scenario does: the full run and the smoke run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class BenchConfig:
    mode: str
    # Scenario 1: RegisterTenant and its floors at each concurrency.
    register_concurrency: tuple[int, ...]
    register_requests_per_worker: int
    register_min_requests: int
    # Scenario 2: tenant-scoped reads with and without the interceptor chain.
    read_concurrency: tuple[int, ...]
    read_requests: int
    read_projects: int
    # Scenario 3: registrations all at once until every tenant is ACTIVE.
    burst: int
    # Scenario 4: provisioning and reads with this many tenants already there.
    growth_levels: tuple[int, ...]
    growth_batch: int
    growth_concurrency: int
    growth_reads: int
    seed_batch: int
    # Scenario 5: deletions, one after the other.
    deletions: int
    # Scenario 9: Suspend, Resume, Delete + Undelete cycles, one call at a
    # time, over this many of the tenants the scenarios registered.
    lifecycle_cycles: int
    lifecycle_tenants: int
    # Scenario 7: registration's statement with and without its event write,
    # at each concurrency (calls per side, in two alternating rounds).
    event_write_concurrency: tuple[int, ...]
    event_write_requests: int
    # Scenario 8: this many WatchTenantEvents streams while `event_registrations`
    # tenants register, `event_register_concurrency` at a time.
    event_watchers: int
    event_registrations: int
    event_register_concurrency: int
    # Scenario 10: a fleet rollout over this many tenants seeded at the
    # previous tenant revision, its floor and a rerun, at this --concurrency.
    fleet_tenants: int
    fleet_concurrency: int
    # Then a rollout over this many more (the 5,000-tenant goal).
    fleet_large_tenants: int
    # The first rollout and its floor, this many times on fresh schemas
    # (`python -m bench --only fleet --fleet-rounds N`): the ratio is the median.
    fleet_rounds: int
    # Bounds every wait for a workflow outcome.
    settle_timeout_seconds: float

    def register_requests(self, concurrency: int) -> int:
        return max(self.register_min_requests, self.register_requests_per_worker * concurrency)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = BenchConfig(
    mode="full",
    register_concurrency=(1, 8, 32),
    register_requests_per_worker=10,
    register_min_requests=200,
    read_concurrency=(1, 8),
    read_requests=1000,
    read_projects=20,
    burst=200,
    growth_levels=(0, 1000, 5000),
    growth_batch=100,
    growth_concurrency=8,
    growth_reads=400,
    seed_batch=100,
    deletions=20,
    lifecycle_cycles=200,
    lifecycle_tenants=20,
    event_write_concurrency=(1, 8),
    event_write_requests=600,
    event_watchers=10,
    event_registrations=200,
    event_register_concurrency=4,
    fleet_tenants=1000,
    fleet_concurrency=4,
    fleet_large_tenants=5000,
    fleet_rounds=1,
    settle_timeout_seconds=300.0,
)

SMOKE = BenchConfig(
    mode="smoke",
    register_concurrency=(1, 2),
    register_requests_per_worker=2,
    register_min_requests=4,
    read_concurrency=(1, 2),
    read_requests=20,
    read_projects=3,
    burst=5,
    growth_levels=(0, 20),
    growth_batch=3,
    growth_concurrency=2,
    growth_reads=10,
    seed_batch=10,
    deletions=2,
    lifecycle_cycles=4,
    lifecycle_tenants=2,
    event_write_concurrency=(1, 2),
    event_write_requests=8,
    event_watchers=2,
    event_registrations=4,
    event_register_concurrency=2,
    fleet_tenants=12,
    fleet_concurrency=4,
    fleet_large_tenants=20,
    fleet_rounds=1,
    settle_timeout_seconds=60.0,
)

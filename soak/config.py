"""What a soak run does: its length, its seed, its load and its fault mix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Every fault the schedule knows, by the name the CLI takes.
FAULTS = ("worker_kill", "api_kill", "postgres_restart", "temporal_restart", "worker_freeze")


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 600.0
    seed: int = 17
    # Concurrent clients doing tenant work, and the calls per second they aim at in all.
    clients: int = 8
    rate: float = 25.0
    # Event watchers that disconnect and resume from their last sequence.
    watchers: int = 3
    # Faults per minute of the fault window, drawn from `faults` (names in FAULTS).
    faults_per_minute: float = 2.0
    faults: tuple[str, ...] = FAULTS
    # Each of these faults happens at least once (the short run's guarantee).
    required_faults: tuple[str, ...] = ()
    # Seconds of load before faults begin (the RSS baseline is taken then).
    warmup: float = 30.0
    # The longest the settle phase may take before the checks run anyway.
    settle_timeout: float = 180.0
    # Retention of a deleted tenant's data: short, so purges happen during the run.
    retention_seconds: float = 4.0
    # Tenants a client keeps alive at most (it registers more as they are purged).
    tenants_per_client: int = 10
    # The API's RSS at the end may be at most this times its value after the warmup;
    # checked for an API process that lived at least `rss_min_window` seconds of it.
    rss_ratio: float = 1.2
    rss_min_window: float = 240.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

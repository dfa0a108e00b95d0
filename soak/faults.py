"""The fault schedule: drawn from the seed before the run starts (the same seed
gives the same faults at the same offsets), executed one after the other, each
with its own recovery (the killed or stopped part is started again)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

from soak.config import FAULTS, SoakConfig
from soak.ledger import Ledger
from soak.stack import WORKERS, SoakStack, log

# Longer than the activities' heartbeat timeout (10 s): Temporal retries the
# frozen worker's activities elsewhere, then the worker thaws holding stale ones.
FREEZE_SECONDS = 14.0
DOWN_SECONDS = 3.0
# The API that is killed: api-a lives through the whole run, so its memory after
# the warmup and at the end can be compared (both serve the clients throughout).
KILLED_API = "api-b"


@dataclass(frozen=True)
class Fault:
    at: float
    name: str
    target: str


def schedule(config: SoakConfig) -> list[Fault]:
    for name in (*config.faults, *config.required_faults):
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}: one of {', '.join(FAULTS)}")
    rng = random.Random(f"{config.seed}-faults")
    # Faults stop well before the load does, so the last one has recovered.
    start, end = config.warmup, config.duration - 25.0
    if end <= start or not (config.faults or config.required_faults):
        return []
    count = max(len(config.required_faults), round(config.faults_per_minute * (end - start) / 60))
    names = list(config.required_faults)
    names += [rng.choice(config.faults) for _ in range(count - len(names))]
    rng.shuffle(names)
    slot = (end - start) / count
    faults = []
    for i, name in enumerate(names):
        target = {"worker_kill": WORKERS, "worker_freeze": WORKERS, "api_kill": (KILLED_API,)}.get(name, ("",))
        faults.append(Fault(start + i * slot + rng.uniform(0, slot * 0.3), name, rng.choice(target)))
    return faults


async def inject(stack: SoakStack, ledger: Ledger, fault: Fault) -> None:
    label = f"{fault.name}:{fault.target}" if fault.target else fault.name
    log(f"t={ledger.now():.0f}s fault {label}")
    began = ledger.now()
    ledger.fault(label, "begin")
    if fault.name == "worker_kill":
        stack.kill(fault.target)
        await asyncio.sleep(DOWN_SECONDS)
        stack.start_worker(fault.target)
    elif fault.name == "api_kill":
        stack.kill(fault.target)
        await asyncio.sleep(DOWN_SECONDS)
        await stack.restart_api(fault.target)
    elif fault.name == "postgres_restart":
        await stack.stop_postgres_immediately()
        await asyncio.sleep(DOWN_SECONDS)
        await stack.start_postgres()
    elif fault.name == "temporal_restart":
        await stack.stop_temporal()
        await asyncio.sleep(DOWN_SECONDS)
        await stack.start_temporal_again()
    elif fault.name == "worker_freeze":
        stack.freeze(fault.target)
        try:
            await asyncio.sleep(FREEZE_SECONDS)
        finally:
            stack.thaw(fault.target)
    ledger.fault(label, "end")
    log(f"t={ledger.now():.0f}s fault {label} recovered in {ledger.now() - began:.1f}s")


async def run_schedule(
    stack: SoakStack, ledger: Ledger, faults: list[Fault], stop: asyncio.Event, required: tuple[str, ...] = ()
) -> list[Fault]:
    """Injects each fault at its offset (later if the one before still recovers);
    the faults injected. Once `stop` is set only a required fault not yet
    injected still runs."""
    done: list[Fault] = []
    begin = time.monotonic() - ledger.now()
    for fault in faults:
        delay = begin + fault.at - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set() and (fault.name not in required or fault.name in {f.name for f in done}):
            continue
        await inject(stack, ledger, fault)
        done.append(fault)
    return done

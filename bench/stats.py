"""Latency summaries, a closed-loop load generator and progress lines."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", flush=True)


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of unsorted samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(seconds: Sequence[float]) -> dict[str, float | int]:
    """Milliseconds: count, mean, p50, p95, p99, max."""
    if not seconds:
        return {"count": 0}
    return {
        "count": len(seconds),
        "mean_ms": round(1000 * sum(seconds) / len(seconds), 3),
        "p50_ms": round(1000 * percentile(seconds, 50), 3),
        "p95_ms": round(1000 * percentile(seconds, 95), 3),
        "p99_ms": round(1000 * percentile(seconds, 99), 3),
        "max_ms": round(1000 * max(seconds), 3),
    }


@dataclass
class LoadResult:
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    # CPU milliseconds per call, by process (see bench.rss.CpuMeter).
    cpu_ms_per_op: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "requests": len(self.latencies) + len(self.errors),
            "errors": len(self.errors),
            "wall_s": round(self.wall_seconds, 3),
            "throughput_per_s": round(self.throughput, 2),
            **summarize(self.latencies),
        }
        if self.cpu_ms_per_op:
            out["cpu_ms_per_op"] = self.cpu_ms_per_op
        if self.errors:
            out["error_samples"] = sorted(set(self.errors))[:5]
        return out

    def merge(self, other: LoadResult) -> LoadResult:
        mine, theirs = len(self.latencies), len(other.latencies)
        cpu = {
            name: round((self.cpu_ms_per_op.get(name, 0.0) * mine + ms * theirs) / max(mine + theirs, 1), 2)
            for name, ms in other.cpu_ms_per_op.items()
        }
        return LoadResult(
            concurrency=self.concurrency,
            latencies=self.latencies + other.latencies,
            errors=self.errors + other.errors,
            wall_seconds=self.wall_seconds + other.wall_seconds,
            cpu_ms_per_op=cpu,
        )


async def run_load(operation: Callable[[int], Awaitable[Any]], *, concurrency: int, total: int) -> LoadResult:
    """`total` calls of `operation(i)` by `concurrency` workers, each starting
    its next call as soon as the previous one returned (closed loop). Failed
    calls count as errors, not latencies."""
    result = LoadResult(concurrency=concurrency)
    counter = iter(range(total))

    async def worker() -> None:
        for index in counter:
            started = time.perf_counter()
            try:
                await operation(index)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                result.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            else:
                result.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_seconds = time.perf_counter() - started
    return result


def ratio(numerator: float, denominator: float) -> float:
    if denominator <= 0 or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return round(numerator / denominator, 3)

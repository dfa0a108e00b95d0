"""Peak resident set size of the services, sampled while the benchmark runs."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psutil

MIB = 1024 * 1024


class RssSampler:
    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._interval = interval
        self.phase = "startup"
        self.peak: dict[str, int] = {}
        self.phase_peak: dict[str, dict[str, int]] = {}
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.samples += 1
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):
                rss = int(process.memory_info().rss)
                self.peak[name] = max(self.peak.get(name, 0), rss)
                phase = self.phase_peak.setdefault(self.phase, {})
                phase[name] = max(phase.get(name, 0), rss)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rss-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()

    def summary(self) -> dict[str, Any]:
        return {
            "interval_s": self._interval,
            "samples": self.samples,
            "peak_mib": {name: round(rss / MIB, 1) for name, rss in self.peak.items()},
            "peak_mib_by_phase": {
                phase: {name: round(rss / MIB, 1) for name, rss in peaks.items()}
                for phase, peaks in self.phase_peak.items()
            },
        }


class CpuMeter:
    """CPU seconds (user + system, all threads) used by each process; for those
    named in `with_children` also by its child processes (PostgreSQL's backends
    are the postmaster's children), live or exited."""

    def __init__(self, pids: dict[str, int], with_children: tuple[str, ...] = ("postgres",)) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._with_children = with_children

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, process in self._processes.items():
            total = 0.0
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total = times.user + times.system
                if name in self._with_children:
                    # children_*: children that exited and were waited for.
                    total += times.children_user + times.children_system
                    for child in process.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            child_times = child.cpu_times()
                            total += child_times.user + child_times.system
            out[name] = total
        return out

    def per_operation_ms(self, before: dict[str, float], operations: int) -> dict[str, float]:
        """CPU milliseconds per operation since `before`, by process; `total`
        is the stack's (every process but the benchmark's own, the load generator)."""
        after = self.snapshot()
        count = max(operations, 1)
        used = {name: 1000 * (after[name] - before.get(name, 0.0)) / count for name in after}
        used["total"] = sum(ms for name, ms in used.items() if name != "bench")
        return {name: round(ms, 2) for name, ms in used.items()}

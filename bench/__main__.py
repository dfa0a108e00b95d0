"""`python -m bench [--smoke] [--output DIR]`: starts the stack on embedded
defaults in a temporary directory, runs every scenario with its floors, writes
DIR/latest.json, latest.md and latest.png, and stops everything it started.

`--only fleet` runs the warmup and scenario 10 alone (DIR/fleet.json and
fleet.md, latest.* untouched); `--fleet-rounds N` repeats its 1,000-tenant
rollout and floor N times on fresh schemas (the ratio is then the median),
`--fleet-large N` sets the second rollout's size (0 skips it)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import report
from bench.config import FULL, SMOKE, BenchConfig
from bench.events import scenario_event_delivery, scenario_event_write
from bench.fleet import scenario_fleet
from bench.lifecycle import scenario_lifecycle
from bench.scenarios import (
    Bench,
    growth_level,
    postgres_settings,
    scenario_deletion,
    scenario_provisioning,
    scenario_reads,
    scenario_register,
    warmup,
)
from bench.stack import DEFAULT_OUTPUT, BenchStack
from bench.stats import progress
from tenantry_dev.embedded import tool_path


def _temporal_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([tool_path("temporal"), "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    return "unknown"


def _left_running(pids: dict[str, int]) -> list[str]:
    left = []
    for name, pid in pids.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(f"{name} ({pid})")
    return left


async def run(config: BenchConfig, stack: BenchStack, only: str | None = None) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    scenarios: dict[str, Any] = {}
    await stack.start()
    pids = stack.pids()
    pids["postgres"] = int(stack.postgres.get_pid())
    pids["postgres-b"] = int(stack.shard_b_postgres.get_pid())
    bench = await Bench.connect(config, stack)
    try:
        pg = await postgres_settings(bench)
        await warmup(bench)
        if only == "fleet":
            scenarios["fleet"] = await scenario_fleet(bench)
        else:
            await _all_scenarios(bench, scenarios)
        stack.check_alive()
    finally:
        await bench.close()
        scenarios["rss"] = {
            "description": "Resident set size sampled every 100 ms for the whole run (psutil).",
            **bench.rss.summary(),
        }
        progress("stopping the stack")
        stack.stop()
    return _finish(started_at, t0, config, pids, pg, scenarios, only)


async def _all_scenarios(bench: Bench, scenarios: dict[str, Any]) -> None:
    config = bench.config
    # Back to back, first: only the tenant count differs between levels.
    # Measured after the other scenarios instead, the thousands of
    # workflows they leave in the Temporal dev server made every later
    # level 20-30% slower, whatever its tenant count.
    growth = [await growth_level(bench, level) for level in config.growth_levels]
    scenarios["growth"] = {
        "description": "Per-tenant provisioning cost (a batch of registrations, each waited until ACTIVE, at "
        "fixed concurrency: wall time / batch) and ListProjects latency spread over random ACTIVE tenants, "
        "with 0 and more existing ACTIVE tenants. The levels run back to back right after the warmup, each "
        "topped up to its count by a raw-SQL fast path (tenant rows + schemas); the other scenarios run after.",
        "levels": growth,
    }
    # Right after growth: the rerun with nothing to apply then spans its
    # thousands of live tenants.
    scenarios["fleet"] = await scenario_fleet(bench)
    scenarios["register"] = await scenario_register(bench)
    scenarios["event_write"] = await scenario_event_write(bench)
    scenarios["reads"] = await scenario_reads(bench)
    scenarios["event_delivery"] = await scenario_event_delivery(bench)
    scenarios["provisioning"] = await scenario_provisioning(bench)
    # Before the deletion scenario, which then deletes these tenants too.
    scenarios["lifecycle"] = await scenario_lifecycle(bench)
    scenarios["deletion"] = await scenario_deletion(bench)


def _finish(
    started_at: datetime,
    t0: float,
    config: BenchConfig,
    pids: dict[str, int],
    pg: dict[str, Any],
    scenarios: dict[str, Any],
    only: str | None,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": {
            "started_at": started_at.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - t0, 1),
            "mode": config.mode,
            "config": config.as_dict(),
            "host": {
                "cpus": os.cpu_count(),
                "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "postgres": pg,
            "temporal": _temporal_version(),
            "processes": pids,
            "processes_left_running": _left_running(pids),
        },
        "scenarios": scenarios,
    }
    results["goals"] = report.fleet_goals(scenarios["fleet"]) if only == "fleet" else report.goals(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only checks the benchmark works")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="directory for latest.{json,md,png}")
    parser.add_argument("--only", choices=["fleet"], help="the warmup and this scenario alone")
    parser.add_argument("--fleet-rounds", type=int, help="scenario 10's rollout and floor this many times")
    parser.add_argument("--fleet-large", type=int, help="scenario 10's second rollout's tenants (0: none)")
    args = parser.parse_args(argv)
    config = SMOKE if args.smoke else FULL
    if args.fleet_rounds is not None:
        config = dataclasses.replace(config, fleet_rounds=max(1, args.fleet_rounds))
    if args.fleet_large is not None:
        config = dataclasses.replace(config, fleet_large_tenants=max(0, args.fleet_large))
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    stack = BenchStack.create()
    progress(f"tenantry benchmark, mode {config.mode}, results to {output}")
    try:
        results = asyncio.run(run(config, stack, args.only))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted, stack stopped", file=sys.stderr)
        return 130
    finally:
        stack.stop()
    if args.only == "fleet":
        written = report.write_fleet_only(results, output)
        print()
        print("\n".join(report.fleet_section(results["scenarios"])).strip())
        progress(f"done in {results['meta']['duration_s']:.0f}s: " + ", ".join(str(p) for p in written))
        return 1 if results["meta"]["processes_left_running"] else 0
    written = [report.write_json(results, output), report.write_markdown(results, output)]
    chart = report.write_chart(results, output)
    if chart is None:
        progress("matplotlib not installed: no chart (pip install -e '.[bench]')")
    else:
        written.append(chart)
    print()
    print(report.markdown(results).split("\n## 1.")[0].strip())
    print()
    progress(f"done in {results['meta']['duration_s']:.0f}s: " + ", ".join(str(p) for p in written))
    if results["meta"]["processes_left_running"]:
        print(f"bench: still running: {results['meta']['processes_left_running']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

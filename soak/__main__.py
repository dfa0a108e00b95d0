"""`python -m soak [--duration S] [--seed N] [--clients N] [--rate R]
[--faults a,b] [--required-faults a,b] [--output DIR]`: starts the stack, holds
the load while the seeded faults land, lets the system settle, checks every
invariant against the ledger and writes DIR/latest.json (and latest.png with
matplotlib). Exit status 1 on any violation, each printed with the seed and the
ledger entries involved."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import signal
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

from soak import report
from soak.checks import final_checks, settle
from soak.config import FAULTS, SoakConfig
from soak.faults import run_schedule, schedule
from soak.ledger import Ledger
from soak.load import Apis, Client, Run, Watcher
from soak.stack import APIS, REPO_ROOT, SoakStack, log

DEFAULT_OUTPUT = REPO_ROOT / "soak" / "results"


def _dump_tasks() -> None:
    """SIGUSR1: every task's stack on stderr (what a run that seems stuck waits for)."""
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


def _rss(pid: int) -> int | None:
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return None


async def _sample_rss(stack: SoakStack, ledger: Ledger, samples: list[dict[str, Any]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for name in APIS:
            pid = stack.services[name].pid
            rss = _rss(pid)
            if rss is not None:
                samples.append({"t": round(ledger.now(), 1), "api": name, "pid": pid, "rss": rss})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5.0)


def rss_check(
    config: SoakConfig, stack: SoakStack, ledger: Ledger, samples: list[dict[str, Any]], end: float
) -> list[dict[str, Any]]:
    """Each API process alive from the warmup's end to the end: its RSS then
    and now, checked when it lived long enough for the ratio to mean something."""
    results = []
    for name in APIS:
        pid = stack.services[name].pid
        now = _rss(pid)
        mine = [s for s in samples if s["pid"] == pid]
        # After the warmup of the run and of this process (an API restarted by a
        # fault starts small and grows to its working size first).
        warm = max(config.warmup, mine[0]["t"] + config.warmup) if mine else config.warmup
        ours = [s for s in mine if s["t"] >= warm]
        if now is None or not ours:
            results.append({"api": name, "pid": pid, "checked": False, "why": "not warmed up before the end"})
            continue
        baseline = ours[0]
        window = end - baseline["t"]
        ratio = now / baseline["rss"]
        row = {
            "api": name,
            "pid": pid,
            "after_warmup_mib": round(baseline["rss"] / 2**20, 1),
            "at_end_mib": round(now / 2**20, 1),
            "ratio": round(ratio, 3),
            "window_s": round(window),
            "checked": window >= config.rss_min_window,
        }
        if row["checked"]:
            ledger.check(
                "api_rss_flat",
                ratio <= config.rss_ratio,
                f"{name} RSS {row['after_warmup_mib']} MiB after the warmup, {row['at_end_mib']} MiB at the end",
            )
        else:
            row["why"] = f"lived {window:.0f}s of the run, under {config.rss_min_window:.0f}s"
        results.append(row)
    return results


async def run(config: SoakConfig, output: Path) -> int:
    started_at = datetime.now(UTC)
    stack = SoakStack.create(config.retention_seconds)
    try:
        await stack.start()
        ledger = Ledger()
        apis = Apis(stack.api_addresses(), stack.admin_token())
        state = Run(ledger, apis, config.seed)
        clients = [
            Client(state, i, config.rate / config.clients, config.tenants_per_client) for i in range(config.clients)
        ]
        watchers = [Watcher(state, i) for i in range(config.watchers)]
        planned = schedule(config)
        log(
            f"seed {config.seed}: {len(planned)} faults planned: " + ", ".join(f"{f.at:.0f}s {f.name}" for f in planned)
        )
        stop_faults, stop_rss = asyncio.Event(), asyncio.Event()
        rss_samples: list[dict[str, Any]] = []
        client_tasks = [asyncio.create_task(c.loop()) for c in clients]
        watcher_tasks = [asyncio.create_task(w.loop()) for w in watchers]
        fault_task = asyncio.create_task(run_schedule(stack, ledger, planned, stop_faults, config.required_faults))
        rss_task = asyncio.create_task(_sample_rss(stack, ledger, rss_samples, stop_rss))

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
        deadline = time.monotonic() + config.duration
        # A fault that could not recover ends the run now, not after the load.
        await asyncio.wait({fault_task}, timeout=config.duration)
        if fault_task.done():
            fault_task.result()
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        # The last fault recovers before the load stops (faults end 25 s early).
        stop_faults.set()
        injected = await fault_task
        state.stopping.set()
        state.stopped_at = ledger.now()
        await asyncio.gather(*client_tasks)
        load_end = ledger.now()
        log(f"load stopped at {load_end:.0f}s; {len(ledger.entries)} calls; settling")
        stack.check_alive()
        engine = create_async_engine(stack.admin_url, poolclass=pool.NullPool)
        try:
            settled = await settle(engine, config.settle_timeout)
            log(f"settled: {settled}")
            summary = await final_checks(state, engine, watchers)
        finally:
            await engine.dispose()
        await asyncio.gather(*watcher_tasks)
        end = ledger.now()
        rss = rss_check(config, stack, ledger, rss_samples, end)
        stop_rss.set()
        await rss_task
        await apis.close()

        faults_by_kind: dict[str, int] = {}
        for fault in injected:
            faults_by_kind[fault.name] = faults_by_kind.get(fault.name, 0) + 1
        results: dict[str, Any] = {
            "meta": {
                "started_at": started_at.isoformat(timespec="seconds"),
                "host": {"cpus": psutil.cpu_count(), "python": platform.python_version(), "load": _load()},
                "load_seconds": round(load_end, 1),
                "total_seconds": round(end, 1),
                # Every process the run started (restarts too): none may outlive it.
                "pids": {
                    **{f"{name}#{i}": pid for i, (name, pid) in enumerate(stack.history)},
                    "postgres": int(stack.postgres.get_pid() or 0),
                },
            },
            "config": config.as_dict(),
            "calls": len(ledger.entries),
            "acknowledged": sum(1 for e in ledger.entries if e.acknowledged),
            "calls_by_rpc_and_code": ledger.codes(),
            "faults_injected": faults_by_kind,
            "faults": [{"at": round(f.at, 1), "name": f.name, "target": f.target} for f in injected],
            "settle": settled,
            "invariants_checked": dict(sorted(ledger.checked.items())),
            "violations": [asdict(v) for v in ledger.violations],
            "tenants": len(state.tenants),
            **summary,
            "rss": rss,
            "timeline": report.timeline(ledger, max(5.0, round(config.duration / 60))),
        }
        report.write(output, results, ledger)
        for violation in ledger.violations:
            print(ledger.describe(violation, config.seed), file=sys.stderr)
        print(
            f"soak: seed {config.seed}: {results['calls']} calls, {len(injected)} faults "
            f"({', '.join(f'{k} {v}' for k, v in faults_by_kind.items())}), "
            f"{sum(ledger.checked.values())} invariant checks, {len(ledger.violations)} violations; "
            f"report in {output}",
            file=sys.stderr,
        )
        return 1 if ledger.violations else 0
    finally:
        await asyncio.to_thread(stack.stop)


def _load() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in psutil.getloadavg()]
    return []


def _names(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        if name not in FAULTS:
            raise argparse.ArgumentTypeError(f"unknown fault {name!r}: one of {', '.join(FAULTS)}")
    return names


def parse(argv: list[str]) -> tuple[SoakConfig, Path]:
    default = SoakConfig()
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=default.duration, help="seconds of load")
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--clients", type=int, default=default.clients)
    parser.add_argument("--rate", type=float, default=default.rate, help="client steps per second, all clients")
    parser.add_argument("--watchers", type=int, default=default.watchers)
    parser.add_argument("--faults", type=_names, default=default.faults, help=f"fault mix: {','.join(FAULTS)}")
    parser.add_argument("--required-faults", type=_names, default=default.required_faults)
    parser.add_argument("--faults-per-minute", type=float, default=default.faults_per_minute)
    parser.add_argument("--warmup", type=float, default=default.warmup)
    parser.add_argument("--settle-timeout", type=float, default=default.settle_timeout)
    parser.add_argument("--retention", type=float, default=default.retention_seconds)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    config = replace(
        default,
        duration=args.duration,
        seed=args.seed,
        clients=args.clients,
        rate=args.rate,
        watchers=args.watchers,
        faults=args.faults,
        required_faults=args.required_faults,
        faults_per_minute=args.faults_per_minute,
        warmup=args.warmup,
        settle_timeout=args.settle_timeout,
        retention_seconds=args.retention,
    )
    return config, args.output


def main(argv: list[str] | None = None) -> int:
    config, output = parse(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    code = asyncio.run(run(config, output))
    log(f"done in {time.monotonic() - started:.0f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())

"""`tenantry-migrate tenants`: start, or re-attach to, the fleet rollout.

One MIGRATE operation is open at a time (a partial unique index): this
command finds it or records a new one, starts its workflow on the worker's
task queue (a duplicate start is harmless: USE_EXISTING), and follows its
progress from the database: a live bar on a terminal, plain lines otherwise.
Ctrl-C detaches; the rollout goes on, and running the command again
re-attaches. Exit 0 when every live tenant is at the target; 1 with one line
per failed tenant otherwise; 2 for a usage error."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sqlalchemy import insert, pool, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from tenantry.db import rollouts as rollout_sql
from tenantry.db.models import Operation
from tenantry.migrations import resolve_tenant_revision, revisions_before
from tenantry.settings import MigrateTenantsSettings
from tenantry.states import DONE_OPERATION_STATES, OperationKind, OperationState
from tenantry.temporal_connection import connect
from tenantry.workflow_contract import MIGRATE_WORKFLOW, MigrateFleetInput, migrate_workflow_id

ACTOR = "system:tenantry-migrate"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DETACHED = 0, 1, 2, 130
POLL_SECONDS = 0.5
# Plain (non-TTY) progress lines: at most one per this many seconds.
PLAIN_LINE_SECONDS = 2.0


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="tenantry-migrate tenants", description="Bring every live tenant schema to a tenant-lineage revision."
    )
    parse.add_argument("--to", default="head", help="target tenant revision (default: head)")
    parse.add_argument("--canary", type=int, default=1, help="tenants upgraded first, one at a time (default 1)")
    parse.add_argument(
        "--concurrency", type=int, default=4, help="tenants upgraded at once per database (shard), 1-16 (default 4)"
    )
    parse.add_argument(
        "--max-failures", type=int, default=0, help="failed tenants tolerated before the rollout stops (default 0)"
    )
    parse.add_argument("--batch-size", type=int, default=200, help=argparse.SUPPRESS)
    parse.add_argument("--detach", action="store_true", help="start or re-attach, print the operation and return")
    return parse


@dataclass(frozen=True)
class Rollout:
    workflow_id: str
    target: str
    created: bool


async def open_or_create(engine: AsyncEngine, target: str) -> Rollout:
    """The open MIGRATE operation, or a new PENDING one to `target` (two
    commands racing: the partial unique index lets one insert, the other
    finds it)."""
    for _ in range(3):
        async with engine.begin() as conn:
            existing = (await conn.execute(rollout_sql.OPEN_ROLLOUT)).first()
            if existing is not None:
                return Rollout(existing.workflow_id, existing.target_revision, created=False)
        workflow_id = migrate_workflow_id(target)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(Operation).values(
                        workflow_id=workflow_id,
                        tenant_id=None,
                        kind=OperationKind.MIGRATE,
                        state=OperationState.PENDING,
                        actor=ACTOR,
                        target_revision=target,
                    )
                )
            return Rollout(workflow_id, target, created=True)
        except IntegrityError:
            continue  # another command recorded one first: attach to it
    raise RuntimeError("could not record or find the open rollout")


async def live_below(engine: AsyncEngine, target: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(rollout_sql.COUNT_BELOW, {"older": list(revisions_before(target))}) or 0)


async def start_workflow(client: Client, task_queue: str, rollout: Rollout, flags: MigrateFleetInput) -> None:
    await client.start_workflow(
        MIGRATE_WORKFLOW,
        flags,
        id=rollout.workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


@dataclass(frozen=True)
class Snapshot:
    state: str
    total: int
    succeeded: int
    failed: int

    @property
    def done(self) -> bool:
        return self.state in DONE_OPERATION_STATES

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.succeeded - self.failed)


async def snapshot(engine: AsyncEngine, workflow_id: str) -> Snapshot:
    async with engine.connect() as conn:
        row = (await conn.execute(rollout_sql.PROGRESS, {"workflow_id": workflow_id})).one()
    return Snapshot(row.state, int(row.progress_total), int(row.progress_succeeded), int(row.progress_failed))


class PlainProgress:
    """One line per change, at most every PLAIN_LINE_SECONDS (CI logs)."""

    def __init__(self, out: TextIO, name: str) -> None:
        self._out = out
        self._name = name
        self._last: Snapshot | None = None
        self._last_time = 0.0
        self._start = time.monotonic()
        self._start_done: int | None = None

    def update(self, now: Snapshot, *, force: bool = False) -> None:
        if self._start_done is None:
            self._start_done = now.succeeded + now.failed
        moment = time.monotonic()
        if now == self._last or (not force and moment - self._last_time < PLAIN_LINE_SECONDS):
            return
        elapsed = moment - self._start
        rate = (now.succeeded + now.failed - self._start_done) / elapsed if elapsed > 0 else 0.0
        eta = f"{now.remaining / rate:.0f}s" if rate > 0 else "?"
        print(
            f"{self._name}: {now.state} done {now.succeeded}/{now.total}, failed {now.failed}, "
            f"remaining {now.remaining}, {rate:.1f} tenants/s, ETA {eta}",
            file=self._out,
            flush=True,
        )
        self._last, self._last_time = now, moment

    def close(self) -> None:
        pass


class BarProgress:
    """rich's live bar: done of total, failed, remaining, rate, ETA."""

    def __init__(self, name: str, file: TextIO | None = None, width: int | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}  remaining {task.fields[remaining]}"),
            TextColumn("{task.fields[rate]} tenants/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=file or sys.stderr, width=width),
        )
        self._task = self._progress.add_task(name, total=None, failed=0, remaining="?", rate="0.0")
        self._start = time.monotonic()
        self._start_done: int | None = None
        self._progress.start()

    def update(self, now: Snapshot, *, force: bool = False) -> None:
        if self._start_done is None:
            self._start_done = now.succeeded + now.failed
        elapsed = time.monotonic() - self._start
        rate = (now.succeeded + now.failed - self._start_done) / elapsed if elapsed > 0 else 0.0
        self._progress.update(
            self._task,
            total=now.total or None,
            completed=now.succeeded + now.failed,
            failed=now.failed,
            remaining=now.remaining,
            rate=f"{rate:.1f}",
        )

    def close(self) -> None:
        self._progress.stop()


async def follow(engine: AsyncEngine, workflow_id: str, display: PlainProgress | BarProgress) -> Snapshot:
    try:
        while True:
            now = await snapshot(engine, workflow_id)
            display.update(now, force=now.done)
            if now.done:
                return now
            await asyncio.sleep(POLL_SECONDS)
    finally:
        display.close()


async def run(args: argparse.Namespace, settings: MigrateTenantsSettings, out: TextIO, err: TextIO) -> int:
    try:
        target = resolve_tenant_revision(args.to)
    except ValueError as exc:
        print(f"tenantry-migrate tenants: {exc}", file=err)
        return EXIT_USAGE
    engine = create_async_engine(settings.database_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            open_rollout = (await conn.execute(rollout_sql.OPEN_ROLLOUT)).first()
        if open_rollout is None and await live_below(engine, target) == 0:
            print(f"every live tenant is at {target}: nothing to do", file=out)
            return EXIT_OK
        rollout = await open_or_create(engine, target)
        name = f"operations/{rollout.workflow_id}"
        if rollout.target != target:
            print(
                f"tenantry-migrate tenants: rollout {name} to {rollout.target} is running; "
                f"wait for it or re-run with --to {rollout.target}",
                file=err,
            )
            return EXIT_USAGE
        client = await connect(settings)
        flags = MigrateFleetInput(
            target_revision=target,
            canary=args.canary,
            concurrency=args.concurrency,
            max_failures=args.max_failures,
            batch_size=args.batch_size,
        )
        await start_workflow(client, settings.task_queue, rollout, flags)
        print(f"{'started' if rollout.created else 're-attached to'} {name} (target {target})", file=out, flush=True)
        if args.detach:
            return EXIT_OK
        display: PlainProgress | BarProgress = BarProgress(name) if out.isatty() else PlainProgress(out, name)
        final = await follow(engine, rollout.workflow_id, display)
        async with engine.connect() as conn:
            failures = (await conn.execute(rollout_sql.failures_of(rollout.workflow_id))).all()
            error_message = await conn.scalar(
                select(Operation.error_message).where(Operation.workflow_id == rollout.workflow_id)
            )
        for tenant_id, reason in failures:
            print(f"tenant {tenant_id}: {reason}", file=err)
        below = await live_below(engine, target)
        if final.state == OperationState.SUCCEEDED and below == 0:
            print(f"{name} SUCCEEDED: {final.succeeded} tenants upgraded; every live tenant is at {target}", file=out)
            return EXIT_OK
        print(
            f"{name} {final.state}: {error_message or ''} ({final.failed} failed, {below} live tenants below {target})",
            file=err,
        )
        return EXIT_FAILED
    finally:
        await engine.dispose()


def main(argv: list[str], settings: MigrateTenantsSettings) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.concurrency <= 16 or args.canary < 0 or args.max_failures < 0 or args.batch_size < 1:
        print(
            "tenantry-migrate tenants: --concurrency must be 1-16; --canary and --max-failures at least 0",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return asyncio.run(run(args, settings, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        print("\ndetached: the rollout goes on; run `tenantry-migrate tenants` again to re-attach", file=sys.stderr)
        return EXIT_DETACHED

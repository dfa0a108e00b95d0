"""MoveTenant's benchmark (issue 15): move throughput against a floor of raw
COPY between the same two databases, and the TENANT_MOVING window.

Standalone (`python -m bench.move`, run by `make bench` after the main
benchmark): two embedded PostgreSQL servers, the control plane and shard
`default` on the first, shard `b` on the second, each prepared as an operator
would (roles, migrations, grants). A tenant with N project rows is written
directly (its schema by the lineage's script, as provisioning makes it), then
moved default -> b by the move's own activities (provisioner_worker.move, run
in temporalio's ActivityEnvironment: the same code the worker runs, without
the Temporal round trips between steps, a few ms each).

- Move throughput: N / (prepare + bulk copy + switch + drop), and the bulk
  copy's own rows/s; the median of three moves per size, after a warm-up move.
- Floor: the same N rows of the same table streamed with asyncpg
  copy_from_query -> copy_to_table from the first server to b just before the
  move reads them (binary, bounded queue), into an empty table of the same
  shape; the faster of table order and primary key order, the median of
  three. Goal: move >= 0.5x.
- Window: moving = true committed -> moving = false committed (the switch's
  own measurement), for a 10,000-row tenant idle and under concurrent writers
  on the source (each writer inserts in short transactions until the switch
  freezes it out). Goal: <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment

from bench.stack import DEFAULT_OUTPUT
from provisioner_worker.move import AbortMoveInput, MoveActivities
from tenantry.db import operations as operation_sql
from tenantry.db.engine import asyncpg_dsn, create_engine, driver_of
from tenantry.db.shards import Shards
from tenantry.migrations import tenant_head_revision, tenant_schema_script
from tenantry.schema_names import schema_name_for
from tenantry.states import OperationKind
from tenantry.workflow_contract import MoveTenantInput, new_workflow_id
from tenantry_dev.embedded import prepare_database, prepare_shard, start_embedded_postgres

THROUGHPUT_GOAL = 0.5
WINDOW_GOAL_SECONDS = 1.0


def _progress(message: str) -> None:
    print(f"bench.move: {message}", file=sys.stderr, flush=True)


async def _tenant(worker: AsyncEngine, rows: int) -> uuid.UUID:
    """An ACTIVE tenant on `default` with `rows` projects."""
    tenant_id, user_id = uuid.uuid4(), uuid.uuid4()
    schema = schema_name_for(tenant_id)
    async with worker.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (id, email, display_name) VALUES (:id, :email, 'Bench admin')"),
            {"id": user_id, "email": f"move-{user_id.hex}@example.com"},
        )
        await conn.execute(
            text(
                "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name, schema_version) "
                "VALUES (:id, :slug, 'Move bench', :user_id, 'ACTIVE', :schema, :revision)"
            ),
            {
                "id": tenant_id,
                "slug": f"move-{tenant_id.hex[:20]}",
                "user_id": user_id,
                "schema": schema,
                "revision": tenant_head_revision(),
            },
        )
        driver = await driver_of(conn)
        await driver.execute(tenant_schema_script(schema))
        await conn.execute(
            text(
                f'INSERT INTO "{schema}".projects (id, name, description) '
                "SELECT gen_random_uuid(), 'p-' || g, repeat('d', 40 + g % 60) FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
    return tenant_id


async def _open_move(worker: AsyncEngine, tenant_id: uuid.UUID) -> str:
    workflow_id = new_workflow_id(OperationKind.MOVE, tenant_id)
    async with worker.begin() as conn:
        await conn.execute(
            operation_sql.insert_pending(
                workflow_id, tenant_id, OperationKind.MOVE, None, "bench", source_shard="default", target_shard="b"
            )
        )
    return workflow_id


@dataclasses.dataclass
class MoveTimes:
    rows: int
    prepare_s: float
    bulk_copy_s: float
    switch_s: float
    drop_s: float
    window_s: float
    recopied: list[str]

    @property
    def total_s(self) -> float:
        return self.prepare_s + self.bulk_copy_s + self.switch_s + self.drop_s


async def _move(activities: MoveActivities, worker: AsyncEngine, tenant_id: uuid.UUID) -> MoveTimes:
    workflow_id = await _open_move(worker, tenant_id)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=workflow_id, heartbeat_timeout=None)
    move = MoveTenantInput(str(tenant_id), "default", "b")
    t0 = time.perf_counter()
    prepared = await env.run(activities.prepare_move, move)
    assert not prepared.switched
    t1 = time.perf_counter()
    rows = await env.run(activities.bulk_copy, move)
    t2 = time.perf_counter()
    try:
        switched = await env.run(activities.switch, move)
    except Exception:
        await env.run(activities.abort_move, AbortMoveInput(str(tenant_id), "default", "b", "MOVE_FAILED: bench"))
        raise
    t3 = time.perf_counter()
    await env.run(activities.drop_old_copy, move)
    t4 = time.perf_counter()
    return MoveTimes(rows, t1 - t0, t2 - t1, t3 - t2, t4 - t3, switched.window_seconds, switched.recopied_tables)


def _median_run(runs: list[MoveTimes]) -> MoveTimes:
    """The run whose whole move took the median time (its steps with it)."""
    return sorted(runs, key=lambda t: t.total_s)[len(runs) // 2]


async def _floor(source_dsn: str, target_dsn: str, schema: str, rows: int) -> float:
    """Seconds to stream the tenant's projects, before its move, from the
    first server into an empty table of the same shape on b: raw COPY,
    nothing else, the move's direction and the very table it will read. The
    faster of the table's own order and primary key order (the move streams
    in key order, which spares the target's indexes random page writes; the
    floor gets the same chance, so the ratio is not flattered)."""
    return min([await _raw_copy(source_dsn, target_dsn, schema, rows, by_key) for by_key in (False, True)])


async def _raw_copy(source_dsn: str, target_dsn: str, schema: str, rows: int, by_key: bool) -> float:
    source = await asyncpg.connect(source_dsn)
    target = await asyncpg.connect(target_dsn)
    try:
        # The same shape on b: the lineage's script under another tenant's name.
        floor_tenant = schema_name_for(uuid.uuid4())
        await target.execute(tenant_schema_script(floor_tenant))
        columns = [
            r[0]
            for r in await source.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum",
                f'"{schema}".projects',
            )
        ]
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=32)

        async def produce() -> None:
            quoted = ", ".join(f'"{c}"' for c in columns)
            query = f'SELECT {quoted} FROM "{schema}".projects' + (" ORDER BY id" if by_key else "")
            await source.copy_from_query(query, output=queue.put, format="binary")
            await queue.put(None)

        async def chunks() -> Any:
            while (chunk := await queue.get()) is not None:
                yield chunk

        start = time.perf_counter()
        async with target.transaction():
            producer = asyncio.create_task(produce())
            await target.copy_to_table(
                "projects", schema_name=floor_tenant, columns=columns, source=chunks(), format="binary"
            )
            await producer
        elapsed = time.perf_counter() - start
        copied = await target.fetchval(f'SELECT count(*) FROM "{floor_tenant}".projects')
        assert copied == rows, (copied, rows)
        await target.execute(f'DROP SCHEMA "{floor_tenant}" CASCADE')
        return elapsed
    finally:
        await source.close()
        await target.close()


async def _window_under_writes(
    activities: MoveActivities, worker: AsyncEngine, admin_dsn: str, rows: int, writers: int
) -> tuple[MoveTimes, int]:
    """A move of a `rows`-row tenant while `writers` connections insert into
    it on the source until the switch freezes them out; returns the move and
    the rows they committed."""
    tenant_id = await _tenant(worker, rows)
    schema = schema_name_for(tenant_id)
    stop = asyncio.Event()
    committed = 0

    async def write(n: int) -> None:
        nonlocal committed
        conn = await asyncpg.connect(admin_dsn)
        try:
            k = 0
            while not stop.is_set():
                try:
                    await conn.execute(
                        f'INSERT INTO "{schema}".projects (id, name) VALUES ($1, $2)', uuid.uuid4(), f"w{n}-{k}"
                    )
                except asyncpg.PostgresError:
                    return  # frozen out: the source was renamed
                committed += 1
                k += 1
        finally:
            await conn.close()

    tasks = [asyncio.create_task(write(n)) for n in range(writers)]
    await asyncio.sleep(0.2)
    try:
        times = await _move(activities, worker, tenant_id)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return times, committed


def _workdir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tenantry-bench-move-"))
    # Embedded PostgreSQL runs as a dedicated system user under root.
    root.chmod(0o755)
    return root


async def run(sizes: list[int], window_rows: int, writers: int, repeats: int) -> dict[str, Any]:
    root = _workdir()
    servers: list[Any] = []
    try:
        _progress("starting two embedded PostgreSQL servers")
        url_a, server_a = start_embedded_postgres(root / "a")
        servers.append(server_a)
        url_b, server_b = start_embedded_postgres(root / "b")
        servers.append(server_b)
        password = secrets.token_hex(16)
        urls_a = await asyncio.to_thread(prepare_database, url_a, password)
        urls_b = await asyncio.to_thread(prepare_shard, url_b, password)
        worker = create_engine(urls_a.worker)
        shards = Shards(worker, {"b": urls_b.worker}, create_engine, control_plane_url=urls_a.worker)
        activities = MoveActivities(worker, shards)
        results: dict[str, Any] = {"moves": [], "windows": []}
        try:
            # Warm-up (connections, catalog caches, the lineage's script): not measured.
            await _move(activities, worker, await _tenant(worker, 1_000))
            for rows in sizes:
                runs: list[tuple[MoveTimes, float]] = []
                for _ in range(repeats):
                    tenant_id = await _tenant(worker, rows)
                    floor = await _floor(
                        asyncpg_dsn(urls_a.admin), asyncpg_dsn(urls_b.admin), schema_name_for(tenant_id), rows
                    )
                    times = await _move(activities, worker, tenant_id)
                    assert times.rows == rows, (times.rows, rows)
                    runs.append((times, floor))
                times = _median_run([t for t, _ in runs])
                floor = statistics.median(f for _, f in runs)
                entry = {
                    "rows": rows,
                    "runs": repeats,
                    "move_s": round(times.total_s, 4),
                    "prepare_s": round(times.prepare_s, 4),
                    "bulk_copy_s": round(times.bulk_copy_s, 4),
                    "switch_s": round(times.switch_s, 4),
                    "drop_s": round(times.drop_s, 4),
                    "window_s": round(times.window_s, 4),
                    "move_rows_per_s": round(rows / times.total_s),
                    "bulk_copy_rows_per_s": round(rows / times.bulk_copy_s),
                    "floor_s": round(floor, 4),
                    "floor_rows_per_s": round(rows / floor),
                    "ratio": round(floor / times.total_s, 3),
                    "goal_ratio": THROUGHPUT_GOAL,
                }
                results["moves"].append(entry)
                _progress(
                    f"{rows} rows: move {entry['move_rows_per_s']} rows/s (bulk copy {entry['bulk_copy_rows_per_s']}), "
                    f"floor {entry['floor_rows_per_s']} rows/s: {entry['ratio']}x; window {times.window_s:.3f} s"
                )
            for label, n in (("idle", 0), ("writers", writers)):
                if n:
                    times, written = await _window_under_writes(
                        activities, worker, asyncpg_dsn(urls_a.admin), window_rows, n
                    )
                else:
                    times, written = await _move(activities, worker, await _tenant(worker, window_rows)), 0
                results["windows"].append(
                    {
                        "rows": window_rows,
                        "load": label,
                        "writers": n,
                        "rows_written_during_move": written,
                        "window_s": round(times.window_s, 4),
                        "tables_copied_again": times.recopied,
                        "goal_s": WINDOW_GOAL_SECONDS,
                    }
                )
                _progress(
                    f"window, {window_rows} rows, {label}: {times.window_s:.3f} s (copied again: {times.recopied})"
                )
        finally:
            await shards.dispose()
            await worker.dispose()
        return results
    finally:
        for server in servers:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# MoveTenant: throughput and the TENANT_MOVING window",
        "",
        "| rows | move s | move rows/s | bulk copy rows/s | raw COPY floor rows/s | ratio (goal >= 0.5) | window s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results["moves"]:
        lines.append(
            f"| {m['rows']} | {m['move_s']} | {m['move_rows_per_s']} | {m['bulk_copy_rows_per_s']} | "
            f"{m['floor_rows_per_s']} | {m['ratio']} | {m['window_s']} |"
        )
    lines += [
        "",
        "| rows | load | rows written during the move | window s (goal <= 1) | copied again |",
        "|---:|---|---:|---:|---|",
    ]
    for w in results["windows"]:
        lines.append(
            f"| {w['rows']} | {w['load']} ({w['writers']} writers) | {w['rows_written_during_move']} | "
            f"{w['window_s']} | {', '.join(w['tables_copied_again']) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.move", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="small sizes: only checks the benchmark works")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    sizes = [1_000] if args.smoke else [10_000, 100_000, 500_000]
    window_rows = 1_000 if args.smoke else 10_000
    results = asyncio.run(run(sizes, window_rows, writers=2 if args.smoke else 4, repeats=1 if args.smoke else 3))
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    (output / "move.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "move.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

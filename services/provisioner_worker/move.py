"""MoveTenant's activities: copy a tenant's schema to another shard, switch
its placement, drop the old copy.

The protocol (each step idempotent; a worker killed anywhere resumes or rolls
back, never leaves two live copies, never loses or duplicates a committed row):

1. `prepare_move`: under the tenant's control-plane row lock, check the move is
   still wanted, then (re)create the tenant's schema on the target shard from
   the rendered tenant lineage at the tenant's recorded schema_version. A
   partial target from an earlier attempt is dropped first: the target never
   serves before the switch, so that is always safe.
2. `bulk_copy`: every tenant table streamed source -> target with COPY
   (binary, in primary key order; the source's COPY TO feeds a bounded queue
   the target's COPY FROM reads: no temporary files), one target transaction
   per table. The tenant serves normally meanwhile.
3. `switch`, the short window: the source's admission row fenced, then
   `moving = true` committed on the control plane (new calls: UNAVAILABLE
   TENANT_MOVING); on the source, every tenant table
   LOCKed IN EXCLUSIVE MODE (in-flight writers finish, new writes wait, reads
   go on), bounded by SWITCH_LOCK_TIMEOUT_MS; per table row count + checksum
   of the source, compared with the target's (taken just before the window:
   only the move writes there); in a table that differs (writes made during the bulk copy)
   the rows that differ by primary key and row hash are copied again (a table
   other tenant tables reference: all of it, with them), then verified by
   checksum; the target commits; the source schema is renamed to its
   tombstone (`<schema>_moved`) and its admission row fenced
   (tenantry.db.admission) in the lock's transaction, so from its commit the
   old copy cannot serve (a call blocked on the lock finds its relation gone,
   and the gate explains that as TENANT_MOVING); then, in one
   control-plane transaction: shard = target, moving = false, version + 1,
   the MOVED event.
4. `drop_old_copy`: the tombstone dropped on the source, the operation SUCCEEDED.

`abort_move` is the compensation: before the source's rename it rolls back
(the target copy dropped, moving = false, the operation FAILED with a reason,
the tenant serving from the source as before); after it, it finishes the
switch instead (the target was verified before the rename committed).

Checksum: per table, the row count and SHA-256 over the table's COPY text
output ordered by primary key (text columns of the key in "C" order), with
the session's text output settings pinned (UTC, ISO dates, full float digits,
hex bytea) on both sides. Equal counts and digests mean equal rows up to a
SHA-256 collision.

Guards against attempts Temporal gave up on that still run: every step
re-checks the operation is open and the placement under the tenant's row
lock; bulk_copy holds a shared advisory lock (MOVE_GUARD_KEY) that the
switch's control-plane transaction takes exclusively, so no copy writes into
the target once it is live. A run restarted from scratch (workflow lost)
finds an earlier run's rename and finishes that switch (prepare_move).

Checkpoints: at the step boundaries tests need to hold (`checkpoint`), the
activity waits for a shared advisory lock (MOVE_CHECKPOINT_KEY, hashtext of
tenant id and step) on the control plane. Nobody holds it in production (one
round trip, granted at once); a test or an operator holding it exclusively
pauses the move exactly there.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy import Table, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from provisioner_worker.activities import current_workflow_id
from provisioner_worker.metrics import MOVE_SWITCH_SECONDS
from tenantry.db import admission
from tenantry.db import operations as operation_sql
from tenantry.db.engine import driver_of
from tenantry.db.events import SYSTEM_WORKER, EventRecord, append_event
from tenantry.db.models import Tenant, TenantBase
from tenantry.db.shards import Shard, Shards, UnknownShardError, shard_transaction
from tenantry.db.timeouts import bound_lock_waits, is_lock_timeout
from tenantry.migrations import tenant_head_revision, tenant_schema_script, tenant_schema_script_at
from tenantry.schema_names import quote_schema, schema_name_for
from tenantry.states import OPEN_OPERATION_STATES, OperationState, TenantEventType, TenantState
from tenantry.workflow_contract import MoveTenantInput

log = logging.getLogger(__name__)

# Error types the move workflow branches on.
MOVE_REFUSED = "MoveRefused"
MOVE_VERIFICATION_FAILED = "MoveVerificationFailed"
MOVE_SWITCH_BUSY = "MoveSwitchBusy"

# The suffix of a moved-away copy's schema name on the source. Not a tenant
# schema name (tenantry.schema_names), so nothing routes to it and the
# reconciler's orphan scan does not count it; drop_old_copy removes it.
TOMBSTONE_SUFFIX = "_moved"
# Advisory lock class of the move checkpoints (see the module docstring).
MOVE_CHECKPOINT_KEY = 7_412_015
# Advisory lock class of the copy guard: bulk_copy holds it shared, the
# switch's control-plane transaction exclusively (so the placement never
# switches under a running copy, and a copy never starts after it).
MOVE_GUARD_KEY = 7_412_016
# How long the switch waits for the tenant's in-flight writers before it
# gives up (moving = false again) and tries later: the window's bound.
SWITCH_LOCK_TIMEOUT_MS = 700
# Bounded queue between the source's COPY TO and the target's COPY FROM.
COPY_QUEUE_CHUNKS = 32
MOVABLE_STATES = (TenantState.ACTIVE, TenantState.SUSPENDED)
# Text output pinned on both sides of a checksum.
_CHECKSUM_SETTINGS = (
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
)

# Checkpoint names (tests hold them).
CHECKPOINT_BULK_COPY = "bulk_copy"  # a table's first chunk sent, its target transaction open
CHECKPOINT_SWITCH_MOVING = "switch_moving"  # moving = true committed, before the source lock
CHECKPOINT_SWITCH_RENAMED = "switch_renamed"  # source renamed and committed, before the control plane


def tombstone_name(schema: str) -> str:
    quote_schema(schema)  # a tenant schema name, or ValueError
    return schema + TOMBSTONE_SUFFIX


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(schema: str, shape: _TableShape) -> str:
    return f"{quote_schema(schema)}.{_quote_ident(shape.name)}"


@dataclass(frozen=True)
class PrepareResult:
    # The tenant is on the target already: an earlier run switched it.
    switched: bool
    schema_version: str = ""


@dataclass(frozen=True)
class SwitchResult:
    # The TENANT_MOVING window: moving = true committed -> moving = false
    # committed (wall clock, seconds since the epoch), and its length.
    window_start: float = 0.0
    window_end: float = 0.0
    window_seconds: float = 0.0
    recopied_tables: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AbortMoveInput:
    tenant_id: str
    source_shard: str
    target_shard: str
    reason: str


@dataclass(frozen=True)
class MoveOutcome:
    """The move workflow's result."""

    state: str
    rows: int = 0
    window_start: float = 0.0
    window_end: float = 0.0
    window_seconds: float = 0.0
    reason: str = ""


def move_failure_reason(cause: BaseException | None) -> str:
    """What a failed move's operation records (pure: the workflow calls it):
    the verification's own "<REASON>: <message>", else a stable text (an
    exception's text, SQL included, goes to the worker's log only)."""
    if isinstance(cause, ApplicationError):
        if cause.type == MOVE_VERIFICATION_FAILED:
            return cause.message
        if cause.type == MOVE_SWITCH_BUSY:
            return "TENANT_BUSY: the tenant's writes did not pause in time for the switch"
    return "MOVE_FAILED: the copy to the target shard could not be completed"


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=MOVE_REFUSED, non_retryable=True)


def tenant_tables() -> list[Table]:
    """The tenant lineage's tables, parents before children (FK order)."""
    return list(TenantBase.metadata.sorted_tables)


@dataclass(frozen=True)
class _TableShape:
    name: str
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    # Columns whose type sorts by a collation: the checksum orders them by
    # "C" so two servers with different default collations agree.
    collatable: frozenset[str] = frozenset()

    def order_by(self) -> str:
        return ", ".join(
            _quote_ident(c) + (' COLLATE "C"' if c in self.collatable else "") for c in self.primary_key or self.columns
        )


async def _table_shapes(driver: asyncpg.Connection, schema: str) -> list[_TableShape]:
    """The tenant tables present in `schema`, in FK order, with their columns
    as the catalog has them. A table there that the models do not know would
    be left behind by a move: refused."""
    rows = await driver.fetch(
        "SELECT c.relname, array_agg(a.attname ORDER BY a.attnum), "
        "array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE a.attcollation <> 0) FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version' GROUP BY c.relname",
        schema,
    )
    present = {row[0]: tuple(row[1]) for row in rows}
    collatable = {row[0]: frozenset(row[2] or ()) for row in rows}
    known = {t.name: t for t in tenant_tables()}
    unknown = sorted(set(present) - set(known))
    if unknown:
        raise _refused(f"schema {schema} has tables the tenant lineage does not declare: {unknown}")
    return [
        _TableShape(t.name, present[t.name], tuple(c.name for c in t.primary_key.columns), collatable[t.name])
        for t in tenant_tables()
        if t.name in present
    ]


def _is_referenced(name: str) -> bool:
    """Another tenant table has a foreign key to `name`."""
    return any(fk.column.table.name == name for table in tenant_tables() for fk in table.foreign_keys)


def _referencing_closure(names: set[str]) -> set[str]:
    """`names` and every tenant table that references one of them (what a
    TRUNCATE of `names` must truncate too)."""
    closure = set(names)
    changed = True
    while changed:
        changed = False
        for table in tenant_tables():
            if table.name in closure:
                continue
            if any(fk.column.table.name in closure for fk in table.foreign_keys):
                closure.add(table.name)
                changed = True
    return closure


async def _pin_text_output(driver: asyncpg.Connection) -> None:
    """The text output a checksum depends on, the same on both sides, for the
    rest of the caller's transaction."""
    await driver.execute(";\n".join(_CHECKSUM_SETTINGS))


def _key_expression(shape: _TableShape) -> str:
    return f"ROW({', '.join(_quote_ident(c) for c in shape.primary_key or shape.columns)})::text"


def _row_hash_expression(shape: _TableShape) -> str:
    return f"sha256(convert_to(ROW({', '.join(_quote_ident(c) for c in shape.columns)})::text, 'UTF8'))"


# The catch-up's scratch table, in the target's copy of the tenant schema and
# only inside the target's transaction (never committed: dropped before, or
# rolled back with it).
_DELTA_TABLE = "_move_delta"


async def _copy_delta(src: asyncpg.Connection, dst: asyncpg.Connection, schema: str, shape: _TableShape) -> int:
    """The catch-up of one table no other tenant table references: the rows
    that differ (by primary key and row hash) deleted on the target and copied
    again from the source; returns how many rows were copied. The source's
    (key, row hash) pairs stream into a scratch table in the target's
    transaction and are compared there, so the worker holds only the keys
    that differ, however large the table. Both transactions are the caller's,
    text output pinned on both (the key's text and the row hashes depend on it)."""
    table, scratch = _table(schema, shape), f"{quote_schema(schema)}.{_quote_ident(_DELTA_TABLE)}"
    key, row_hash = _key_expression(shape), _row_hash_expression(shape)
    await dst.execute(f"CREATE TABLE {scratch} (k text NOT NULL, h bytea NOT NULL)")
    await _stream(
        src,
        f"SELECT {key}, {row_hash} FROM {table}",
        [],
        dst,
        schema,
        _DELTA_TABLE,
        ["k", "h"],
        label=f"{schema}.{shape.name}",
    )
    differing = await dst.fetch(
        f"SELECT t.k AS stale, s.k AS missing FROM (SELECT {key} AS k, {row_hash} AS h FROM {table}) t "
        f"FULL JOIN {scratch} s ON s.k = t.k WHERE t.h IS DISTINCT FROM s.h"
    )
    await dst.execute(f"DROP TABLE {scratch}")
    stale = [row["stale"] for row in differing if row["stale"] is not None]
    missing = [row["missing"] for row in differing if row["missing"] is not None]
    if stale:
        await dst.execute(f"DELETE FROM {table} WHERE {key} = ANY($1::text[])", stale)
    if missing:
        await _copy_table(src, dst, schema, shape, only_keys=missing)
    return len(missing)


async def _checksums(
    driver: asyncpg.Connection, schema: str, shapes: Sequence[_TableShape]
) -> dict[str, tuple[int, bytes]]:
    """(row count, digest) per table, in the caller's transaction (its text
    output pinned: `_pin_text_output`). The digest is SHA-256 over the
    table's COPY text output ordered by primary key, hashed here as it
    streams: the server only formats rows (a per-row sha256 in SQL and an
    ordered string_agg cost six times as much), and the text format, unlike
    the binary one, carries no database-local type OIDs. The row count is
    COPY's own command tag."""
    result: dict[str, tuple[int, bytes]] = {}
    for shape in shapes:
        columns = ", ".join(_quote_ident(c) for c in shape.columns)
        result[shape.name] = await _digest_of_copy(
            driver,
            f"SELECT {columns} FROM {_table(schema, shape)} ORDER BY {shape.order_by()}",
        )
    return result


async def _digest_of_copy(driver: asyncpg.Connection, query: str) -> tuple[int, bytes]:
    digest = hashlib.sha256()

    async def feed(chunk: bytes) -> None:
        digest.update(chunk)

    status = await driver.copy_from_query(query, output=feed)
    return _copied_rows(status), digest.digest()


def _copied_rows(status: str) -> int:
    """The row count of a COPY's command tag ("COPY 123")."""
    verb, _, count = status.partition(" ")
    if verb != "COPY" or not count.isdigit():
        raise RuntimeError(f"unexpected COPY status {status!r}")
    return int(count)


async def _copy_table(
    source: asyncpg.Connection,
    target: asyncpg.Connection,
    schema: str,
    shape: _TableShape,
    *,
    checkpoint: _Checkpoint | None = None,
    only_keys: list[str] | None = None,
) -> int:
    """The table's rows (those whose primary key, as text, is in `only_keys`
    if given), streamed from `source` into `target` (binary COPY, bounded
    queue, no file), in primary key order: the target's indexes then grow at
    their right edge instead of at random pages. Both connections'
    transactions are the caller's. Returns the rows copied."""
    columns = ", ".join(_quote_ident(c) for c in shape.columns)
    query = f"SELECT {columns} FROM {_table(schema, shape)}"
    args: list[list[str]] = []
    if only_keys is not None:
        query += f" WHERE {_key_expression(shape)} = ANY($1::text[])"
        args.append(only_keys)
    query += f" ORDER BY {shape.order_by()}"
    return await _stream(
        source,
        query,
        args,
        target,
        schema,
        shape.name,
        list(shape.columns),
        label=f"{schema}.{shape.name}",
        checkpoint=checkpoint,
    )


async def _stream(
    source: asyncpg.Connection,
    query: str,
    args: Sequence[object],
    target: asyncpg.Connection,
    schema: str,
    table: str,
    columns: list[str],
    *,
    label: str,
    checkpoint: _Checkpoint | None = None,
) -> int:
    """`query`'s rows on `source` into `table` on `target`: binary COPY out
    feeding binary COPY in through a bounded queue (no file, bounded memory);
    returns the rows written."""
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=COPY_QUEUE_CHUNKS)

    async def produce() -> None:
        try:
            await source.copy_from_query(query, *args, output=queue.put, format="binary")
        except BaseException as exc:
            await queue.put(exc)
            raise
        await queue.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        first = True
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise RuntimeError(f"reading {label} from the source failed") from item
            yield item
            if activity.in_activity():
                activity.heartbeat()
            if first and checkpoint is not None:
                first = False
                await checkpoint.wait(CHECKPOINT_BULK_COPY)

    producer = asyncio.create_task(produce())
    try:
        status = await target.copy_to_table(
            table, schema_name=schema, columns=columns, source=chunks(), format="binary"
        )
        await producer
    finally:
        if not producer.done():
            producer.cancel()
        # Retrieve the producer's outcome so a failure is not left unobserved.
        await asyncio.gather(producer, return_exceptions=True)
    return _copied_rows(status)


@dataclass(frozen=True)
class _Checkpoint:
    engine: AsyncEngine
    tenant_id: uuid.UUID

    async def wait(self, step: str) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock_shared(:key, hashtext(:name))"),
                {"key": MOVE_CHECKPOINT_KEY, "name": checkpoint_name(self.tenant_id, step)},
            )
            await conn.commit()


def checkpoint_name(tenant_id: uuid.UUID, step: str) -> str:
    return f"{tenant_id}:{step}"


async def _schema_exists(driver: asyncpg.Connection, schema: str) -> bool:
    return bool(
        await driver.fetchval("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)", schema)
    )


_LOCK_TENANT = "SELECT state, shard, moving, schema_version, version FROM tenants WHERE id = :tenant_id FOR UPDATE"


@dataclass(frozen=True)
class _Row:
    state: str
    shard: str
    moving: bool
    schema_version: str
    version: int


async def _lock_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> _Row:
    row = (await conn.execute(text(_LOCK_TENANT), {"tenant_id": tenant_id})).one_or_none()
    if row is None:
        raise _refused(f"tenant {tenant_id} not found")
    return _Row(row.state, row.shard, row.moving, row.schema_version, row.version)


async def _operation_open(conn: AsyncConnection, workflow_id: str) -> bool:
    state = await conn.scalar(operation_sql.state_of(workflow_id))
    return state in OPEN_OPERATION_STATES


async def _set_moving(conn: AsyncConnection, tenant_id: uuid.UUID, moving: bool) -> None:
    """Every flip bumps the version: a fence written for `moving = true`
    (tenantry.db.admission) is outranked once the tenant serves again."""
    await conn.execute(update(Tenant).where(Tenant.id == tenant_id).values(moving=moving, version=Tenant.version + 1))


class MoveActivities:
    """`engine`: the control plane's; `shards`: the databases holding tenant schemas."""

    def __init__(self, engine: AsyncEngine, shards: Shards | None = None) -> None:
        self._engine = engine
        self._shards = shards or Shards.single(engine)

    def _shard(self, name: str) -> Shard:
        try:
            return self._shards[name]
        except UnknownShardError as exc:
            raise _refused(str(exc)) from None

    def _checkpoint(self, tenant_id: uuid.UUID) -> _Checkpoint:
        return _Checkpoint(self._engine, tenant_id)

    @activity.defn(name="prepare_move")
    async def prepare_move(self, input: MoveTenantInput) -> PrepareResult:
        """RUNNING; the move still wanted (operation open, tenant ACTIVE or
        SUSPENDED on the source); the target schema built fresh at the
        tenant's schema_version. Refusals end the operation FAILED."""
        tenant_id = uuid.UUID(input.tenant_id)
        workflow_id = current_workflow_id()
        schema = schema_name_for(tenant_id)
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(operation_sql.MARK_RUNNING, {"workflow_id": workflow_id})
        async with self._engine.begin() as conn:
            await bound_lock_waits(conn)
            row = await _lock_tenant(conn, tenant_id)
            if not await _operation_open(conn, workflow_id):
                raise _refused(f"operation {workflow_id} is not open")
            problem = None
            if row.shard == input.target_shard:
                if row.moving:
                    await _set_moving(conn, tenant_id, False)
                return PrepareResult(switched=True, schema_version=row.schema_version)
            if row.state not in MOVABLE_STATES:
                problem = f"WRONG_TENANT_STATE: tenant {tenant_id} is {row.state}"
            elif row.shard != input.source_shard:
                problem = f"SHARD_CHANGED: tenant {tenant_id} is on shard {row.shard}, not {input.source_shard}"
            elif input.target_shard not in self._shards or input.source_shard not in self._shards:
                problem = f"SHARD_NOT_CONFIGURED: this worker's TENANTRY_SHARDS lacks {input.target_shard!r}"
            elif self._shards.database_of(input.source_shard) == self._shards.database_of(input.target_shard):
                # Building the target would drop the live schema: it is the same one.
                problem = f"SAME_DATABASE: shards {input.source_shard} and {input.target_shard} are one database"
            if problem is None:
                # A run restarted from scratch (its workflow lost) after an
                # earlier run renamed the source: the target is the only
                # copy; finish that switch, never rebuild the target.
                source = self._shard(input.source_shard)
                async with source.engine.connect() as source_conn:
                    src = await driver_of(source_conn)
                    live = await _schema_exists(src, schema)
                    renamed = not live and await _schema_exists(src, tombstone_name(schema))
                    await source_conn.rollback()
                if renamed:
                    await self._switch_control_plane(conn, tenant_id, input.target_shard, workflow_id)
                    return PrepareResult(switched=True, schema_version=row.schema_version)
                if not live:
                    problem = f"SOURCE_MISSING: tenant {tenant_id} has no schema on shard {input.source_shard}"
                elif row.moving:
                    await _set_moving(conn, tenant_id, False)  # an earlier run's switch, undone: serve
            if problem is not None:
                await conn.execute(
                    operation_sql.transition(workflow_id, OPEN_OPERATION_STATES, OperationState.FAILED, problem)
                )
                # Committed with the refusal (the context manager commits on return).
                refusal = _refused(problem)
            else:
                refusal = None
                script = (
                    tenant_schema_script(schema)
                    if row.schema_version == tenant_head_revision()
                    else tenant_schema_script_at(schema, row.schema_version)
                )
                target = self._shard(input.target_shard)
                async with target.engine.begin() as target_conn:
                    await bound_lock_waits(target_conn)
                    driver = await driver_of(target_conn)
                    # A partial copy of an earlier attempt: never served, safe to drop.
                    await driver.execute(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE; {script}")
        if refusal is not None:
            raise refusal
        return PrepareResult(switched=False, schema_version=row.schema_version)

    @activity.defn(name="bulk_copy")
    async def bulk_copy(self, input: MoveTenantInput) -> int:
        """Every tenant table copied source -> target, one target transaction
        per table (the target's tables emptied first: a re-run starts over).
        Returns the rows copied. Holds the tenant's copy guard (shared) and
        refuses once the tenant is on the target: an attempt Temporal gave up
        on that still runs can never write into the copy after it went live."""
        tenant_id = uuid.UUID(input.tenant_id)
        schema = schema_name_for(tenant_id)
        source, target = self._shard(input.source_shard), self._shard(input.target_shard)
        rows = 0
        async with (
            self._engine.connect() as guard,
            source.engine.connect() as source_conn,
            target.engine.connect() as target_conn,
        ):
            guard = await guard.execution_options(isolation_level="AUTOCOMMIT")
            key = {"key": MOVE_GUARD_KEY, "name": str(tenant_id)}
            await guard.execute(text("SELECT pg_advisory_lock_shared(:key, hashtext(:name))"), key)
            try:
                row = (
                    await guard.execute(text("SELECT shard FROM tenants WHERE id = :id"), {"id": tenant_id})
                ).one_or_none()
                if (
                    row is None
                    or row.shard == input.target_shard
                    or not await _operation_open(guard, current_workflow_id())
                ):
                    raise _refused(f"tenant {tenant_id} is switched already or its move is over")
                src = await driver_of(source_conn)
                dst = await driver_of(target_conn)
                await self._check_versions(src, dst, schema)
                shapes = await _table_shapes(src, schema)
                # An earlier attempt's rows (prepare_move made the tables empty).
                filled = [s for s in shapes if await dst.fetchval(f"SELECT EXISTS (SELECT FROM {_table(schema, s)})")]
                if filled:
                    await dst.execute("TRUNCATE " + ", ".join(_table(schema, s) for s in filled) + " CASCADE")
                for shape in shapes:
                    async with src.transaction(isolation="repeatable_read", readonly=True), dst.transaction():
                        rows += await _copy_table(src, dst, schema, shape, checkpoint=self._checkpoint(tenant_id))
                    activity.heartbeat()
                await source_conn.rollback()
                await target_conn.rollback()
            finally:
                await guard.execute(text("SELECT pg_advisory_unlock_shared(:key, hashtext(:name))"), key)
        return rows

    async def _check_versions(self, src: asyncpg.Connection, dst: asyncpg.Connection, schema: str) -> None:
        query = f"SELECT version_num FROM {quote_schema(schema)}.alembic_version"
        source_version, target_version = await asyncio.gather(src.fetchval(query), dst.fetchval(query))
        if source_version != target_version:
            raise ApplicationError(
                f"SCHEMA_CHANGED: the source schema is at {source_version}, the copy at {target_version}",
                type=MOVE_VERIFICATION_FAILED,
                non_retryable=True,
            )

    @activity.defn(name="switch")
    async def switch(self, input: MoveTenantInput) -> SwitchResult:
        """The window (module docstring, step 3). Idempotent: finds the source
        renamed already and finishes the control-plane part, or finds the
        tenant switched and does nothing."""
        tenant_id = uuid.UUID(input.tenant_id)
        workflow_id = current_workflow_id()
        schema = schema_name_for(tenant_id)
        tombstone = tombstone_name(schema)
        source, target = self._shard(input.source_shard), self._shard(input.target_shard)
        target_digests = await self._target_digests(source, target, schema)
        # (a) moving = true, committed: new calls are refused from here.
        async with self._engine.begin() as conn:
            await bound_lock_waits(conn)
            row = await _lock_tenant(conn, tenant_id)
            if row.shard == input.target_shard or not await _operation_open(conn, workflow_id):
                return SwitchResult()
            # The source's admission row first (the shard-first protocol):
            # it admits no call from here, as the control plane will not.
            async with shard_transaction(conn, source) as source_conn:
                await source_conn.execute(text(admission.fence(tenant_id, row.version + 1)))
            await _set_moving(conn, tenant_id, True)
        start_wall, start = time.time(), time.monotonic()
        recopied: list[str] = []
        busy = False
        try:
            await self._checkpoint(tenant_id).wait(CHECKPOINT_SWITCH_MOVING)
            async with self._engine.begin() as conn:
                await bound_lock_waits(conn)
                # Held to the end: an abort, or a second attempt, waits for this one.
                row = await _lock_tenant(conn, tenant_id)
                # No bulk copy (a straggling attempt) writes into the target from here on.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key, hashtext(:name))"),
                    {"key": MOVE_GUARD_KEY, "name": str(tenant_id)},
                )
                if row.shard == input.target_shard or not await _operation_open(conn, workflow_id):
                    return SwitchResult()
                async with source.engine.connect() as source_conn, target.engine.connect() as target_conn:
                    src, dst = await driver_of(source_conn), await driver_of(target_conn)
                    try:
                        # The version _switch_control_plane commits: the source's fence.
                        fence = admission.fence(tenant_id, row.version + 1)
                        recopied = await self._freeze_verify_rename(src, dst, schema, tombstone, target_digests, fence)
                    finally:
                        await source_conn.rollback()
                        await target_conn.rollback()
                await self._checkpoint(tenant_id).wait(CHECKPOINT_SWITCH_RENAMED)
                await self._switch_control_plane(conn, tenant_id, input.target_shard, workflow_id)
        except Exception as exc:
            # Serve from the source again unless its copy is gone already
            # (renamed: only the control-plane part is left, the retry does it).
            await self._serve_from_source_unless_renamed(tenant_id, source, input.target_shard)
            if not is_lock_timeout(exc):
                raise
            busy = True
        if busy:
            # Raised outside the handler: not a lock timeout the worker's
            # interceptor would re-run forever; a counted, bounded retry.
            raise ApplicationError(
                f"tenant {tenant_id}'s tables stayed busy for {SWITCH_LOCK_TIMEOUT_MS} ms; retrying the switch later",
                type=MOVE_SWITCH_BUSY,
            )
        seconds = time.monotonic() - start
        MOVE_SWITCH_SECONDS.observe(seconds)
        log.info(
            "tenant %s moved %s -> %s; TENANT_MOVING window %.3f s, tables copied again: %s",
            tenant_id,
            input.source_shard,
            input.target_shard,
            seconds,
            recopied,
            extra={"workflow_id": workflow_id, "window_seconds": seconds},
        )
        return SwitchResult(start_wall, start_wall + seconds, seconds, recopied)

    async def _serve_from_source_unless_renamed(self, tenant_id: uuid.UUID, source: Shard, target_shard: str) -> None:
        """moving = false after a failed switch attempt, if the source still
        has the live schema (best effort: a source that cannot be asked
        leaves the flag; its tenant could not be served anyway)."""
        schema = schema_name_for(tenant_id)
        try:
            async with self._engine.begin() as conn:
                await bound_lock_waits(conn)
                # The row lock first: another attempt that holds it may be
                # renaming the source right now; once we hold it, it is done.
                row = await _lock_tenant(conn, tenant_id)
                if row.shard == target_shard or not row.moving:
                    return
                async with source.engine.connect() as source_conn:
                    live = await _schema_exists(await driver_of(source_conn), schema)
                    await source_conn.rollback()
                if live:
                    await _set_moving(conn, tenant_id, False)
        except Exception:
            log.exception("could not clear the moving flag of tenant %s", tenant_id)

    async def _target_digests(self, source: Shard, target: Shard, schema: str) -> dict[str, tuple[int, bytes]] | None:
        """The target copy's checksums, before the window: nothing but the
        move writes there, so they hold until the switch copies again what
        differs. None when there is no live source to compare with. (Taken
        inside the window at the same time as the source's they made it
        longer, not shorter: on two cores the two servers and the worker
        hashing both streams contend.)"""
        async with source.engine.connect() as source_conn, target.engine.connect() as target_conn:
            src, dst = await driver_of(source_conn), await driver_of(target_conn)
            if not await _schema_exists(src, schema) or not await _schema_exists(dst, schema):
                return None
            shapes = await _table_shapes(src, schema)
            async with dst.transaction(isolation="repeatable_read", readonly=True):
                await _pin_text_output(dst)
                digests = await _checksums(dst, schema, shapes)
            await source_conn.rollback()
            await target_conn.rollback()
        return digests

    async def _freeze_verify_rename(
        self,
        src: asyncpg.Connection,
        dst: asyncpg.Connection,
        schema: str,
        tombstone: str,
        target_digests: dict[str, tuple[int, bytes]] | None,
        fence: str,
    ) -> list[str]:
        """(b): in one source transaction, lock, verify against the target's
        checksums (`target_digests`, computed before the window; None: here),
        copy again what differs and verify that, commit the target, rename
        the source and `fence` its admission row (tenantry.db.admission: the
        source admits no call from here), commit the source. Returns the
        tables copied again. Source already renamed (an earlier attempt committed it): nothing to do."""
        if not await _schema_exists(src, schema):
            if await _schema_exists(src, tombstone) and await _schema_exists(dst, schema):
                return []
            raise ApplicationError(
                f"neither {schema} nor its tombstone on the source, or no copy on the target",
                type=MOVE_VERIFICATION_FAILED,
                non_retryable=True,
            )
        source_tx = src.transaction()
        await source_tx.start()
        finished = False
        try:
            await src.execute(f"SET LOCAL lock_timeout = {SWITCH_LOCK_TIMEOUT_MS}")
            shapes = await _table_shapes(src, schema)
            names = ", ".join(_table(schema, s) for s in shapes)
            await src.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
            await self._check_versions(src, dst, schema)
            await _pin_text_output(src)
            expected = await _checksums(src, schema, shapes)
            target_tx = dst.transaction()
            await target_tx.start()
            try:
                await _pin_text_output(dst)
                known = target_digests if target_digests is not None else await _checksums(dst, schema, shapes)
                differ = {name for name in expected if expected[name] != known.get(name)}
                recopied: list[str] = []
                if differ:
                    # Writes made during the bulk copy. A table others
                    # reference is copied again whole with them (a TRUNCATE
                    # must take them along); any other only by its rows that differ.
                    whole = _referencing_closure({name for name in differ if _is_referenced(name)})
                    again = [s for s in shapes if s.name in whole]
                    if again:
                        await dst.execute("TRUNCATE " + ", ".join(_table(schema, s) for s in again))
                        for shape in again:
                            await _copy_table(src, dst, schema, shape)
                    for shape in shapes:
                        if shape.name in differ and shape.name not in whole:
                            await _copy_delta(src, dst, schema, shape)
                    checked = [s for s in shapes if s.name in differ | whole]
                    recopied = [s.name for s in checked]
                    actual = await _checksums(dst, schema, checked)
                    mismatched = sorted(name for name in actual if actual[name] != expected[name])
                    if mismatched:
                        raise ApplicationError(
                            f"VERIFICATION_FAILED: tables {mismatched} differ after copying them again",
                            type=MOVE_VERIFICATION_FAILED,
                            non_retryable=True,
                        )
                await target_tx.commit()
            except BaseException:
                await target_tx.rollback()
                raise
            await src.execute(
                f"DROP SCHEMA IF EXISTS {_quote_ident(tombstone)} CASCADE; "
                f"ALTER SCHEMA {quote_schema(schema)} RENAME TO {_quote_ident(tombstone)}; "
                f"{fence}"
            )
            finished = True
            await source_tx.commit()
        except BaseException:
            if not finished:
                await source_tx.rollback()
            raise
        return recopied

    async def _switch_control_plane(
        self, conn: AsyncConnection, tenant_id: uuid.UUID, target_shard: str, workflow_id: str
    ) -> None:
        """(c): shard = target, moving = false, version + 1, MOVED; in the
        caller's transaction, which holds the tenant's row lock."""
        state = (
            await conn.execute(
                update(Tenant)
                .where(Tenant.id == tenant_id)
                .values(shard=target_shard, moving=False, version=Tenant.version + 1, update_time=text("now()"))
                .returning(Tenant.state)
            )
        ).scalar_one()
        actor = await conn.scalar(operation_sql.actor_of(workflow_id))
        await append_event(
            conn, EventRecord(tenant_id, TenantEventType.MOVED, TenantState(state), actor or SYSTEM_WORKER, workflow_id)
        )

    @activity.defn(name="drop_old_copy")
    async def drop_old_copy(self, input: MoveTenantInput) -> None:
        """(d): the source's tombstone dropped, the operation SUCCEEDED."""
        tenant_id = uuid.UUID(input.tenant_id)
        tombstone = tombstone_name(schema_name_for(tenant_id))
        source = self._shard(input.source_shard)
        async with source.engine.begin() as conn:
            await bound_lock_waits(conn)
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {_quote_ident(tombstone)} CASCADE"))
        async with self._engine.begin() as conn:
            await bound_lock_waits(conn)
            await conn.execute(
                operation_sql.transition(current_workflow_id(), OPEN_OPERATION_STATES, OperationState.SUCCEEDED)
            )

    @activity.defn(name="abort_move")
    async def abort_move(self, input: AbortMoveInput) -> str:
        """Compensation. Before the source's rename: the target copy dropped,
        moving = false, the operation FAILED with `reason` ("rolled_back").
        After it: the switch finished instead ("switched")."""
        tenant_id = uuid.UUID(input.tenant_id)
        workflow_id = current_workflow_id()
        schema = schema_name_for(tenant_id)
        async with self._engine.begin() as conn:
            await bound_lock_waits(conn)
            row = await _lock_tenant(conn, tenant_id)
            if row.shard == input.target_shard:
                return "switched"
            source = self._shard(input.source_shard)
            async with source.engine.connect() as source_conn:
                src = await driver_of(source_conn)
                renamed = not await _schema_exists(src, schema) and await _schema_exists(src, tombstone_name(schema))
                await source_conn.rollback()
            if renamed:
                # The target was verified and committed before the rename.
                await self._switch_control_plane(conn, tenant_id, input.target_shard, workflow_id)
                return "switched"
            target = self._shard(input.target_shard)
            async with target.engine.begin() as target_conn:
                await bound_lock_waits(target_conn)
                await target_conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE"))
            await _set_moving(conn, tenant_id, False)
            await conn.execute(
                operation_sql.transition(workflow_id, OPEN_OPERATION_STATES, OperationState.FAILED, input.reason)
            )
        log.warning("move of tenant %s rolled back: %s", tenant_id, input.reason, extra={"workflow_id": workflow_id})
        return "rolled_back"

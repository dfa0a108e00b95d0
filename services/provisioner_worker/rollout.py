"""Fleet rollout activities: tenant schemas brought to a tenant-lineage
revision, in batches, each tenant in its own transaction.

Speed comes from not paying alembic per tenant: every revision step is
rendered once, offline, for a placeholder schema (tenantry.migrations), and a
tenant's upgrade is that SQL with its schema name, run in one round trip. A
step alembic cannot render runs through alembic online for that tenant (one
at a time per process: alembic's `op` is process-global).

Per tenant, one transaction: `lock_timeout` first (a busy tenant is reported
BUSY and retried later, never blocking the fleet), the tenant row locked, its
state and recorded revision checked (a schema already at the target is never
upgraded again, whoever raced for it), the schema's own alembic stamp checked
against the row, the DDL, the row's new revision, and the SCHEMA_MIGRATED
event last.

The usual case is one round trip per tenant: the batch reads each tenant's
state, revision and schema, and the whole transaction is sent at once, opened
by a guard statement (rollouts.row_guard) that locks the row and fails unless
all of that still holds. A tenant the guard (or anything else) stops is rolled
back and taken again on the careful path, which checks step by step and says
why. Each of the batch's `concurrency` lanes keeps one connection for its
tenants. The operation's succeeded count is recounted from the events while
the batch runs and at its end, not updated by each tenant's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity

from provisioner_worker.activities import current_workflow_id
from tenantry.db import operations as operation_sql
from tenantry.db import rollouts as rollout_sql
from tenantry.db import tenants as tenant_sql
from tenantry.db.engine import driver_of
from tenantry.db.events import SYSTEM_WORKER, EventRecord, append_event
from tenantry.db.models import Tenant
from tenantry.db.shards import Shards, UnknownShardError, shard_transaction
from tenantry.migrations import for_schema, revisions_before, tenant_revisions, upgrade_steps, upgrade_tenant_schema
from tenantry.pg_errors import UNAVAILABLE_SQLSTATE_PREFIXES, pg_error
from tenantry.schema_names import is_tenant_schema_name, quote_schema, schema_name_for
from tenantry.settings import DEFAULT_SHARD
from tenantry.states import OPEN_OPERATION_STATES, OperationState, TenantEventType, TenantState
from tenantry.workflow_contract import MigrateFleetInput

log = logging.getLogger(__name__)

LOCK_NOT_AVAILABLE = "55P03"
# How long one tenant's upgrade waits for a lock (its row, its tables) before
# it gives way and is retried later.
TENANT_LOCK_TIMEOUT = "2s"
_ONLINE_UPGRADE_LOCK = asyncio.Lock()
# While a batch runs, its succeeded count is recounted this often.
PROGRESS_REFRESH_SECONDS = 0.5


class Outcome(StrEnum):
    UPGRADED = "UPGRADED"
    SKIPPED = "SKIPPED"  # at the target already, or no longer live
    BUSY = "BUSY"  # a lock was not available in time: retried later
    FAILED = "FAILED"


@dataclass(frozen=True)
class BatchInput:
    rollout: MigrateFleetInput
    # Keyset position: the batch takes tenants with a greater id ('' = from the start).
    after: str = ""
    limit: int = 200
    concurrency: int = 1
    # Retry exactly these tenants (busy before) instead of the next batch.
    tenant_ids: list[str] = field(default_factory=list)
    # Busy tenants of this batch are recorded as failed (the last retry).
    busy_is_failure: bool = False
    # Canaries: one at a time, and none after the first failure.
    stop_at_first_failure: bool = False


@dataclass(frozen=True)
class BatchResult:
    last_id: str
    exhausted: bool
    upgraded: int
    busy: list[str]
    failed_total: int


@dataclass(frozen=True)
class FinishRolloutInput:
    state: str
    error_message: str = ""


@dataclass(frozen=True)
class Seen:
    """A tenant as the batch read it: what its one-round-trip upgrade expects."""

    state: str
    recorded: str
    schema: str
    shard: str = DEFAULT_SHARD


@functools.cache
def _rendered(recorded: str, target: str) -> tuple[tuple[str, ...], ...] | None:
    """The steps' rendered statements from `recorded` to `target`, or None if
    one cannot be rendered."""
    steps = [step.statements for step in upgrade_steps(recorded, target)]
    if any(statements is None for statements in steps):
        return None
    return tuple(statements or () for statements in steps)


class RolloutActivities:
    def __init__(self, engine: AsyncEngine, shards: Shards | None = None) -> None:
        self._engine = engine
        self._shards = shards or Shards.single(engine)

    @activity.defn(name="begin_rollout")
    async def begin_rollout(self, input: MigrateFleetInput) -> int:
        """RUNNING, and the total: tenants done so far plus those still below
        the target. Returns the total."""
        workflow_id = current_workflow_id()
        async with self._engine.begin() as conn:
            await conn.execute(operation_sql.MARK_RUNNING, {"workflow_id": workflow_id})
            total = await conn.scalar(
                rollout_sql.SET_TOTAL,
                {"workflow_id": workflow_id, "older": list(revisions_before(input.target_revision))},
            )
        return int(total or 0)

    @activity.defn(name="migrate_batch")
    async def migrate_batch(self, input: BatchInput) -> BatchResult:
        workflow_id = current_workflow_id()
        target = input.rollout.target_revision
        older = list(revisions_before(target))
        async with self._engine.connect() as conn:
            actor = await conn.scalar(operation_sql.actor_of(workflow_id)) or SYSTEM_WORKER
            if input.tenant_ids:
                rows = await conn.execute(rollout_sql.TENANTS_BY_ID, {"ids": input.tenant_ids})
            else:
                rows = await conn.execute(
                    rollout_sql.NEXT_TENANTS,
                    {"older": older, "after": input.after, "limit": input.limit, "workflow_id": workflow_id},
                )
            tenants = [(str(row.id), Seen(row.state, row.schema_version, row.schema_name, row.shard)) for row in rows]
        fetched = len(tenants)
        outcomes: dict[str, Outcome] = {}
        stop = False

        async def remote_lane(queue: deque[tuple[str, Seen]]) -> None:
            # Another database's tenants: each upgrade takes its own short
            # control-plane transaction (_upgrade_remote), so the lane keeps
            # no control-plane connection idle beside it.
            while queue and not stop:
                tenant_id, seen = queue.popleft()
                await record(tenant_id, await self._upgrade_one(uuid.UUID(tenant_id), target, workflow_id, actor, seen))

        async def record(tenant_id: str, outcome: Outcome) -> None:
            nonlocal stop
            if outcome == Outcome.BUSY and input.busy_is_failure:
                await self._record_failure(
                    workflow_id,
                    tenant_id,
                    f"TENANT_BUSY: its locks were held longer than {TENANT_LOCK_TIMEOUT} on every attempt",
                )
                outcome = Outcome.FAILED
            outcomes[tenant_id] = outcome
            activity.heartbeat(len(outcomes))
            if outcome == Outcome.FAILED and input.stop_at_first_failure:
                stop = True

        async def lane(queue: deque[tuple[str, Seen]]) -> None:
            while queue and not stop:
                async with self._engine.connect() as conn:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    driver = await driver_of(conn)
                    while queue and not stop:
                        tenant_id, seen = queue.popleft()
                        await record(
                            tenant_id,
                            await self._upgrade_one(uuid.UUID(tenant_id), target, workflow_id, actor, seen, driver),
                        )
                        if driver.is_closed() or driver.is_in_transaction():
                            await conn.invalidate()  # a new connection for the lane's next tenant
                            break

        if input.stop_at_first_failure:
            # Canaries: one at a time, whatever their shards.
            lanes = {"": (deque(tenants), 1)}
        else:
            # Each database (the control plane's, which its local shards share,
            # or another shard's) gets `concurrency` lanes of its own, and the
            # databases are rolled out in parallel.
            by_database: dict[str, deque[tuple[str, Seen]]] = {}
            for tenant in tenants:
                by_database.setdefault(self._database_of(tenant[1].shard), deque()).append(tenant)
            lanes = {name: (queue, max(1, min(input.concurrency, len(queue)))) for name, queue in by_database.items()}
        refresher = asyncio.create_task(self._refresh_progress(workflow_id))
        try:
            async with asyncio.TaskGroup() as group:
                for name, (queue, count) in lanes.items():
                    for _ in range(count):
                        group.create_task(lane(queue) if name == "" else remote_lane(queue))
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        async with self._engine.begin() as conn:
            progress = (await conn.execute(rollout_sql.RECOUNT_PROGRESS, {"workflow_id": workflow_id})).one()
        # The tenants taken, in id order (canaries stop at their first failure).
        ids = [tenant_id for tenant_id, _ in tenants if tenant_id in outcomes]
        return BatchResult(
            last_id=ids[-1] if ids else input.after,
            exhausted=not input.tenant_ids and fetched < input.limit,
            upgraded=sum(1 for o in outcomes.values() if o == Outcome.UPGRADED),
            busy=[t for t in ids if outcomes[t] == Outcome.BUSY],
            failed_total=int(progress.progress_failed),
        )

    async def _refresh_progress(self, workflow_id: str) -> None:
        """The succeeded count recounted every PROGRESS_REFRESH_SECONDS while
        a batch runs (what the command's bar and ListOperations show)."""
        while True:
            await asyncio.sleep(PROGRESS_REFRESH_SECONDS)
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(rollout_sql.RECOUNT_PROGRESS, {"workflow_id": workflow_id})
            except DBAPIError as exc:  # the batch's own statements report the database
                log.debug("rollout %s: progress not refreshed: %s", workflow_id, exc)

    @activity.defn(name="finish_rollout")
    async def finish_rollout(self, input: FinishRolloutInput) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                operation_sql.transition(
                    current_workflow_id(), OPEN_OPERATION_STATES, OperationState(input.state), input.error_message
                )
            )

    async def _upgrade_one(
        self,
        tenant_id: uuid.UUID,
        target: str,
        workflow_id: str,
        actor: str,
        seen: Seen | None = None,
        driver: asyncpg.Connection | None = None,
    ) -> Outcome:
        """One tenant's upgrade: in one round trip if `seen` (how the batch
        read it) still holds, on `driver` (left out of any transaction, or
        closed) or a connection of its own; otherwise the careful path.
        A tenant on another database than the control plane's takes the
        two-database path (_upgrade_remote)."""
        try:
            if seen is not None and seen.shard in self._shards and not self._shards[seen.shard].local:
                return await self._upgrade_remote(tenant_id, target, workflow_id, actor)
            if seen is not None and seen.recorded in revisions_before(target):
                steps = _rendered(seen.recorded, target)
                if steps is not None:
                    if driver is None:
                        async with self._engine.connect() as conn:
                            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                            try:
                                outcome = await _upgrade_at_once(
                                    await driver_of(conn), tenant_id, seen, steps, target, workflow_id, actor
                                )
                            finally:
                                own = await driver_of(conn)
                                if own.is_closed() or own.is_in_transaction():
                                    await conn.invalidate()
                    else:
                        outcome = await _upgrade_at_once(driver, tenant_id, seen, steps, target, workflow_id, actor)
                    if outcome is not None:
                        return outcome
            # The careful paths: the tenant may have moved since the batch read it.
            if await self._is_remote(tenant_id):
                return await self._upgrade_remote(tenant_id, target, workflow_id, actor)
            if all(step.statements is not None for step in upgrade_steps(tenant_revisions()[0], target)):
                return await self._upgrade_fast(tenant_id, target, workflow_id, actor)
            async with self._engine.begin() as conn:
                return await _upgrade_in(conn, tenant_id, target, workflow_id, actor)
        except _VersionMismatch:
            await self._record_failure(
                workflow_id, str(tenant_id), "VERSION_MISMATCH: the schema's own stamp differs from the tenant's record"
            )
            return Outcome.FAILED
        except (DBAPIError, asyncpg.PostgresError) as exc:
            # The DDL runs on the driver (asyncpg's own errors), the rest through SQLAlchemy.
            driver_error = exc.orig if isinstance(exc, DBAPIError) else exc
            sqlstate = (pg_error(exc).sqlstate if isinstance(exc, DBAPIError) else exc.sqlstate) or ""
            if sqlstate == LOCK_NOT_AVAILABLE:
                return Outcome.BUSY
            if sqlstate.startswith(UNAVAILABLE_SQLSTATE_PREFIXES) or (
                isinstance(exc, DBAPIError) and exc.connection_invalidated
            ):
                raise  # the database, not the tenant: the activity retries
            name = type(getattr(driver_error, "__cause__", None) or driver_error).__name__
            if isinstance(exc, asyncpg.PostgresError):
                name = type(exc).__name__
            log.warning("tenant %s: schema upgrade to %s failed: %s", tenant_id, target, exc)
            await self._record_failure(
                workflow_id, str(tenant_id), f"MIGRATION_FAILED: {name} (SQLSTATE {sqlstate or 'unknown'})"
            )
            return Outcome.FAILED
        except _TenantRefused as refused:
            await self._record_failure(workflow_id, str(tenant_id), str(refused))
            return Outcome.FAILED

    def _database_of(self, shard: str) -> str:
        """Which database a shard's tenants are upgraded on: "" for the
        control plane's (its local shards share it), else the shard database's
        (shards that share one share its lanes); an unknown shard by name."""
        return self._shards.database_of(shard) if shard in self._shards else shard

    async def _is_remote(self, tenant_id: uuid.UUID) -> bool:
        """The tenant's schema is on a shard that is not the control plane's database."""
        async with self._engine.connect() as conn:
            shard = await conn.scalar(select(Tenant.shard).where(Tenant.id == tenant_id))
        return shard is not None and (shard not in self._shards or not self._shards[shard].local)

    async def _upgrade_remote(self, tenant_id: uuid.UUID, target: str, workflow_id: str, actor: str) -> Outcome:
        """A tenant whose schema is on another database, by the two-database
        protocol (tenantry.db.shards): its row locked in the control plane;
        on its shard, in one transaction, the schema's own stamp checked and
        the DDL (which moves the stamp); that commits; then the row's revision
        and the SCHEMA_MIGRATED event commit in the control plane. A crash
        between the two commits leaves the schema stamped at the target and
        the row behind: the next attempt finds the stamp already at the target
        and only finishes the control-plane part (never a second upgrade)."""
        async with self._engine.begin() as conn:
            await conn.execute(text(f"SET LOCAL lock_timeout = '{TENANT_LOCK_TIMEOUT}'"))
            row = (await conn.execute(rollout_sql.LOCK_REMOTE_FOR_UPGRADE, {"tenant_id": tenant_id})).one_or_none()
            if row is None:
                return Outcome.SKIPPED
            state, recorded, schema, shard_name, moving = row
            if state not in rollout_sql.ROLLOUT_TENANT_STATES or recorded not in revisions_before(target):
                return Outcome.SKIPPED  # purged, or at the target already
            if moving:
                return Outcome.BUSY  # its move is switching shards: later, on the shard it ends on
            try:
                shard = self._shards[shard_name]
            except UnknownShardError:
                raise _TenantRefused(
                    f"SHARD_NOT_CONFIGURED: the tenant is on shard {shard_name}, which this worker's "
                    "TENANTRY_SHARDS does not list"
                ) from None
            async with shard_transaction(conn, shard) as shard_conn:
                await shard_conn.execute(text(f"SET LOCAL lock_timeout = '{TENANT_LOCK_TIMEOUT}'"))
                if not await shard_conn.scalar(tenant_sql.schema_exists(schema)):
                    raise _TenantRefused(
                        f"SCHEMA_MISSING: the tenant is {state} but its schema {schema} does not exist "
                        f"on shard {shard_name}"
                    )
                stamped = await shard_conn.scalar(
                    text(f"SELECT version_num FROM {quote_schema(schema)}.alembic_version FOR UPDATE")
                )
                if stamped != target:
                    if stamped != recorded:
                        raise _TenantRefused(
                            f"VERSION_MISMATCH: the schema is stamped {stamped}, the tenant records {recorded}"
                        )
                    await _run_steps(shard_conn, schema, recorded, target)
            await conn.execute(rollout_sql.STAMP_UPGRADED, {"tenant_id": tenant_id, "revision": target})
            await append_event(
                conn, EventRecord(tenant_id, TenantEventType.SCHEMA_MIGRATED, TenantState(state), actor, workflow_id)
            )
            return Outcome.UPGRADED

    async def _upgrade_fast(self, tenant_id: uuid.UUID, target: str, workflow_id: str, actor: str) -> Outcome:
        """The same transaction as _upgrade_in in three round trips on the
        driver (every step rendered): BEGIN with lock_timeout; the row lock
        and its checks; then one script: the schema's stamp checked, the
        steps' DDL, the row's revision and the event (one statement, the
        event counter last), COMMIT."""
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            driver = await driver_of(conn)
            try:
                await driver.execute(f"BEGIN; SET LOCAL lock_timeout = '{TENANT_LOCK_TIMEOUT}'")
                row = await driver.fetchrow(rollout_sql.LOCK_FOR_UPGRADE_SQL, tenant_id)
                if row is None:
                    await driver.execute("ROLLBACK")
                    return Outcome.SKIPPED
                state, recorded, schema, schema_present = row
                if state not in rollout_sql.ROLLOUT_TENANT_STATES or recorded not in revisions_before(target):
                    await driver.execute("ROLLBACK")
                    return Outcome.SKIPPED  # purged, or at the target already: never upgrade twice
                if not schema_present:
                    await driver.execute("ROLLBACK")
                    raise _TenantRefused(
                        f"SCHEMA_MISSING: the tenant is {state} but its schema {schema} does not exist"
                    )
                steps = [for_schema(step.statements or (), schema) for step in upgrade_steps(recorded, target)]
                finish = rollout_sql.upgraded_statement(
                    tenant_id, target, workflow_id, TenantState(state), actor or SYSTEM_WORKER
                )
                script = "\n".join([rollout_sql.stamp_guard(schema, recorded), *steps, finish + ";", "COMMIT"])
                try:
                    await driver.execute(script)
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate == rollout_sql.VERSION_MISMATCH_SQLSTATE:
                        raise _VersionMismatch from exc
                    raise
                return Outcome.UPGRADED
            finally:
                if driver.is_closed():
                    await conn.invalidate()
                elif driver.is_in_transaction():
                    try:
                        await driver.execute("ROLLBACK")
                    except Exception:  # noqa: BLE001 - discard a connection in an unknown state
                        await conn.invalidate()

    async def _record_failure(self, workflow_id: str, tenant_id: str, reason: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                rollout_sql.RECORD_FAILURE, {"workflow_id": workflow_id, "tenant_id": tenant_id, "reason": reason}
            )


class _TenantRefused(Exception):
    """The tenant cannot be upgraded; the message is its stored reason."""


class _VersionMismatch(Exception):
    """The schema's own alembic stamp is not the revision the tenant row records."""


async def _upgrade_in(
    conn: AsyncConnection, tenant_id: uuid.UUID, target: str, workflow_id: str, actor: str
) -> Outcome:
    await conn.execute(text(f"SET LOCAL lock_timeout = '{TENANT_LOCK_TIMEOUT}'"))
    row = (await conn.execute(rollout_sql.LOCK_FOR_UPGRADE, {"tenant_id": tenant_id})).one_or_none()
    if row is None:
        return Outcome.SKIPPED
    state, recorded, schema, schema_present = row
    if state not in rollout_sql.ROLLOUT_TENANT_STATES or recorded not in revisions_before(target):
        # Purged, or at the target (or beyond) already: never upgrade twice.
        return Outcome.SKIPPED
    if not schema_present:
        raise _TenantRefused(f"SCHEMA_MISSING: the tenant is {state} but its schema {schema} does not exist")
    stamped = await conn.scalar(text(f"SELECT version_num FROM {quote_schema(schema)}.alembic_version"))
    if stamped != recorded:
        raise _TenantRefused(f"VERSION_MISMATCH: the schema is stamped {stamped}, the tenant records {recorded}")
    await _run_steps(conn, schema, recorded, target)
    await conn.execute(rollout_sql.STAMP_UPGRADED, {"tenant_id": tenant_id, "revision": target})
    await append_event(
        conn, EventRecord(tenant_id, TenantEventType.SCHEMA_MIGRATED, TenantState(state), actor, workflow_id)
    )
    return Outcome.UPGRADED


async def _run_steps(conn: AsyncConnection, schema: str, recorded: str, target: str) -> None:
    """The lineage's steps from `recorded` to `target` on `schema`, in the
    transaction open on `conn`: rendered ones on the driver, any other online."""
    driver = await driver_of(conn)
    for step in upgrade_steps(recorded, target):
        if step.statements is not None:
            await driver.execute(for_schema(step.statements, schema))
        else:
            async with _ONLINE_UPGRADE_LOCK:
                await conn.run_sync(upgrade_tenant_schema, schema, step.to_revision)


# Stand-ins in a rendered script template, replaced per tenant: a tenant id
# and its schema name no real tenant has (rendering and validating the script
# once per batch kind instead of per tenant keeps the worker's CPU per tenant low).
_TEMPLATE_TENANT = str(uuid.UUID(int=0))
_TEMPLATE_SCHEMA = schema_name_for(uuid.UUID(int=0))


@functools.lru_cache(maxsize=64)
def _script_template(
    state: str, recorded: str, target: str, workflow_id: str, actor: str, steps: tuple[tuple[str, ...], ...]
) -> str:
    """A tenant's whole upgrade transaction for the stand-in tenant."""
    tenant_id = uuid.UUID(_TEMPLATE_TENANT)
    return "\n".join(
        [
            f"BEGIN; SET LOCAL lock_timeout = '{TENANT_LOCK_TIMEOUT}';",
            rollout_sql.row_guard(tenant_id, _TEMPLATE_SCHEMA, recorded, TenantState(state)) + ";",
            *(for_schema(statements, _TEMPLATE_SCHEMA) for statements in steps),
            rollout_sql.upgraded_statement(tenant_id, target, workflow_id, TenantState(state), actor) + ";",
            "COMMIT",
        ]
    )


async def _upgrade_at_once(
    driver: asyncpg.Connection,
    tenant_id: uuid.UUID,
    seen: Seen,
    steps: tuple[tuple[str, ...], ...],
    target: str,
    workflow_id: str,
    actor: str,
) -> Outcome | None:
    """The tenant's whole transaction in one message, opened by its row guard:
    UPGRADED, BUSY (a lock not granted in time), or None when anything else
    stopped it (rolled back: the careful path takes it and tells why). Raises
    for the database being unavailable. Leaves `driver` out of a transaction
    unless it is broken."""
    if not is_tenant_schema_name(seen.schema):
        return None  # the careful path refuses it with its reason
    template = _script_template(seen.state, seen.recorded, target, workflow_id, actor, steps)
    script = template.replace(_TEMPLATE_SCHEMA, seen.schema).replace(_TEMPLATE_TENANT, str(tenant_id))
    try:
        await driver.execute(script)
        return Outcome.UPGRADED
    except asyncpg.PostgresError as exc:
        sqlstate = exc.sqlstate or ""
        if sqlstate.startswith(UNAVAILABLE_SQLSTATE_PREFIXES):
            raise
        if sqlstate == LOCK_NOT_AVAILABLE:
            return Outcome.BUSY
        if sqlstate != rollout_sql.GUARD_SQLSTATE:
            log.info("tenant %s: one-round-trip upgrade stopped (%s), taking the careful path", tenant_id, sqlstate)
        return None
    finally:
        if not driver.is_closed() and driver.is_in_transaction():
            with contextlib.suppress(Exception):  # the lane discards a connection left in one
                await driver.execute("ROLLBACK")

"""The tenant gate: which tenant a tenant-scoped call is for, and whether it may
run now. Which services are tenant-scoped is declared in the proto contract
(`option (tenantry.v1.tenant_scoped) = true`), nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import asyncpg
import grpc
from google.protobuf import descriptor_pool
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from tenant_api.call_transaction import (
    CallSession,
    abandon,
    call_transaction,
    driver_call,
    open_transaction,
    unscoped_connection,
)
from tenant_api.errors import ApiError, FieldViolation, failed_precondition, not_found, unavailable
from tenant_api.headers import TENANT_ID_HEADER, TENANT_SLUG_HEADER, metadata_value
from tenant_api.validation import parse_uuid, slug_problem
from tenantry.db import admission
from tenantry.db import tenants as tenant_sql
from tenantry.db.shards import Shard, Shards, UnknownShardError
from tenantry.pg_errors import INVALID_SCHEMA_NAME, SCHEMA_OBJECT_MISSING_SQLSTATES, pg_error
from tenantry.schema_names import schema_name_for
from tenantry.settings import DEFAULT_SHARD
from tenantry.states import TenantState
from tenantry.v1 import options_pb2

log = logging.getLogger(__name__)

# Expand/contract: the oldest tenant-lineage revision this API build can serve
# (ProjectService reads `projects.archived`, added by t0002). A tenant whose
# schema is older is refused with TENANT_SCHEMA_OUTDATED until the fleet
# rollout (`tenantry-migrate tenants`) brings it here. Raise it only after
# every live tenant is at least there; new tenants are created at head.
OLDEST_SERVED_TENANT_REVISION = "t0002"


@dataclass(frozen=True)
class TenantScope:
    tenant_id: uuid.UUID
    schema_name: str
    # In the call's transaction, on a connection to the tenant's shard, with
    # the tenant's schema in its schema_translate_map. Use it as it is: never
    # begin, commit or roll back (it refuses; see call_transaction).
    session: CallSession
    # The shard the call runs on (a TENANTRY_SHARDS name).
    shard: str = DEFAULT_SHARD


current_tenant: ContextVar[TenantScope] = ContextVar("current_tenant")


@cache
def is_tenant_scoped(method: str) -> bool:
    """`method` is the gRPC path, `/package.Service/Method`."""
    service_name = method.lstrip("/").partition("/")[0]
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except KeyError:
        return False
    return bool(service.GetOptions().Extensions[options_pb2.tenant_scoped])  # type: ignore[index]


def _invalid(reason: str, header: str, message: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT, reason, message, {"header": header}, [FieldViolation(header, message)]
    )


# How long a client should wait before retrying a call refused while its
# tenant's move switches shards (RetryInfo).
MOVING_RETRY_AFTER_SECONDS = 0.5
# The gate's guesses of where remote tenants are (ids and slugs), at most this
# many: beyond it the one admitted longest ago is forgotten (a missing or
# wrong guess costs a round trip or a wasted BEGIN, never a wrong answer).
MAX_REMOTE_HINTS = 100_000
# Admission rows being written at once, at most (the rest are skipped: the
# tenant's next call through the control plane tries again), so a burst of
# first calls after a start does not take the shards' pools from the calls.
MAX_ADMISSION_WRITES = 4


@dataclass
class _Hint:
    """Where this process last admitted a remote tenant."""

    shard: Shard
    # Its admission row there admits it, as far as this process knows (its
    # own write of the row applied, or the last call was admitted by it).
    # Only then is a call by id tried there first: a fenced row would cost
    # every call a round trip before the control plane's.
    by_row: bool = False
    # The highest version whose admit that row refused (a fence at or above
    # it): no write is tried again for it.
    fenced_through: int = 0


@dataclass
class _Opened:
    """A call's transaction opened on a remote shard, or why it could not be."""

    shard: Shard
    conn: AsyncConnection | None = None
    driver: asyncpg.Connection | None = None
    error: BaseException | None = None
    # The statement that opened it said "SELECT 1" (the shard admits the tenant).
    admitted: bool = False


async def _release(opened: _Opened | None) -> None:
    """Ends a transaction opened for a call that will not run there."""
    if opened is not None and opened.conn is not None and opened.driver is not None:
        try:
            await abandon(opened.conn, opened.driver)
        finally:
            await opened.conn.close()


class TenantGate:
    """`engine`: the control plane's; `shards`: where tenant schemas live
    (None: the one default shard on the control plane's database)."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        oldest_revision: str = OLDEST_SERVED_TENANT_REVISION,
        shards: Shards | None = None,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._oldest_revision = oldest_revision
        self._shards = shards or Shards.single(engine)
        self._local_shards = self._shards.local_names
        # Rendered once, run by the driver. Never cached: every call reads
        # the tenant's state anew.
        self._admission = tenant_sql.AdmissionQueries.render(engine.dialect)
        self._begin_if_active = (
            tenant_sql.begin_if_active(oldest_revision, self._local_shards) if self._local_shards else None
        )
        self._begin_if_admitted = admission.begin_if_admitted(oldest_revision)
        # Tenant id or slug -> the remote shard this process last admitted it
        # on: where to ask that shard's admission row (by id), or where to
        # open the call's transaction while the control plane's row is read
        # (by slug). A wrong guess costs a round trip, never a wrong answer:
        # the shard's row, or else the control plane's, decides every call.
        self._remote_hints: dict[uuid.UUID | str, _Hint] = {}
        # Background work: speculative transactions being rolled back,
        # admission rows being written (strong references).
        self._background: set[asyncio.Future[None]] = set()
        # Tenants whose admission row is being written (one write at a time each).
        self._admitting: set[uuid.UUID] = set()

    @asynccontextmanager
    async def admitted(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> AsyncIterator[TenantScope]:
        """Admits the call for an ACTIVE tenant and yields its scope for the
        call's duration; raises the gate's error otherwise."""
        raw_id = metadata_value(metadata, TENANT_ID_HEADER)
        slug = metadata_value(metadata, TENANT_SLUG_HEADER)
        if raw_id:
            tenant_id = parse_uuid(raw_id)
            if tenant_id is None:
                raise _invalid("INVALID_TENANT_ID", TENANT_ID_HEADER, f"{TENANT_ID_HEADER} must be a UUID")
            key: uuid.UUID | str = tenant_id
            query, ref = self._admission.by_id, {"tenant_id": str(tenant_id)}
        elif slug:
            if slug_problem(slug) is not None:
                raise _invalid("INVALID_TENANT_ID", TENANT_SLUG_HEADER, f"{TENANT_SLUG_HEADER} is not a valid slug")
            key = slug
            query, ref = self._admission.by_slug, {"slug": slug}
        else:
            raise _invalid(
                "TENANT_REQUIRED", TENANT_ID_HEADER, f"name the tenant in {TENANT_ID_HEADER} or {TENANT_SLUG_HEADER}"
            )
        hint = self._remote_hints.get(key)
        speculation: asyncio.Future[_Opened] | None = None
        if hint is not None and hint.by_row and isinstance(key, uuid.UUID):
            # A tenant this process last admitted on another shard: that
            # shard's admission row admits it in the round trip that opens
            # the call's transaction there (tenantry.db.admission), as a
            # local tenant's is admitted on the control plane.
            first = await self._begin_on(hint.shard, self._begin_if_admitted(key))
            if first.admitted:
                # Last in the map again: the busiest tenants are forgotten last.
                if self._remote_hints.pop(key, None) is not None:
                    self._remote_hints[key] = hint
                async with self._serve_on(first, key, schema_name_for(key)) as scope:
                    yield scope
                return
            hint.by_row = False
            if not isinstance(first.error, asyncpg.PostgresError):
                # Not admitted there, or the shard unreachable: the row says
                # why, and where it is admitted the transaction is open already.
                speculation = asyncio.get_running_loop().create_future()
                speculation.set_result(first)
        try:
            async with self._engine.connect() as conn:
                driver = await unscoped_connection(conn)
                if hint is None and isinstance(key, uuid.UUID) and self._begin_if_active is not None:
                    # The usual case in one round trip: the call's transaction
                    # opens with the admission check ("SELECT 1": ACTIVE, its
                    # schema at a revision this build serves, on this database's
                    # shard and not moving), and the call runs in it.
                    admission_sql = self._begin_if_active(key)
                    if await open_transaction(conn, driver, admission_sql) == "SELECT 1":
                        async with call_transaction(conn, driver, schema_name_for(key)) as session:
                            yield TenantScope(key, schema_name_for(key), session, self._local_shards[0])
                        return
                    await abandon(conn, driver)
                if hint is not None and speculation is None:
                    # By slug, or not admitted by its row there: speculatively,
                    # on the shard it was on, a BEGIN there while the row is
                    # read, nothing else unless the row admits the call there
                    # (else it is rolled back in the background).
                    speculation = asyncio.ensure_future(self._begin_on(hint.shard))
                # By slug, on another shard, or refused: read the row to admit or to say why not.
                row = await driver_call(conn, driver, driver.fetchrow(query, key))
                if row is None:
                    self._remote_hints.pop(key, None)
                    raise not_found("TENANT_NOT_FOUND", f"tenant {next(iter(ref.values()))} not found", **ref)
                admitted_id, state, schema_name, purge_time, schema_version, shard_name, moving, version = row
                refused = gate_error(str(admitted_id), state, purge_time, schema_version, self._oldest_revision, moving)
                if refused is not None:
                    self._remote_hints.pop(key, None)
                    raise refused
                shard = self._shard(str(admitted_id), shard_name)
                if shard.local:
                    self._remote_hints.pop(key, None)
                    self._discard(speculation)
                    speculation = None
                    await open_transaction(conn, driver)
                    async with call_transaction(conn, driver, schema_name) as session:
                        yield TenantScope(admitted_id, schema_name, session, shard.name)
                    return
                # Re-inserted last (dicts keep insertion order): when full,
                # the hint admitted longest ago goes, not all of them.
                known = self._remote_hints.pop(key, None)
                if len(self._remote_hints) >= MAX_REMOTE_HINTS:
                    del self._remote_hints[next(iter(self._remote_hints))]
                hint_now = known if known is not None and known.shard is shard else _Hint(shard)
                self._remote_hints[key] = hint_now
                self._record_admission(hint_now, admitted_id, version, schema_version)
            # Another database: the control-plane connection went back to the
            # pool before the call runs. Whatever changes meanwhile (a purge, a
            # move's switch) shows as the schema gone or locked there:
            # explain_failure.
            if speculation is not None and hint is not None and hint.shard is shard:
                opened = await speculation
            else:
                self._discard(speculation)
                opened = await self._begin_on(shard)
            speculation = None
        finally:
            self._discard(speculation)
        async with self._serve_on(opened, admitted_id, schema_name) as scope:
            yield scope

    @asynccontextmanager
    async def _serve_on(self, opened: _Opened, tenant_id: uuid.UUID, schema_name: str) -> AsyncIterator[TenantScope]:
        """The call, in the transaction `opened` on another shard's database."""
        shard = opened.shard
        if opened.error is not None or opened.conn is None or opened.driver is None:
            log.warning("shard %s unreachable: %s", shard.name, opened.error)
            raise shard_unavailable(str(tenant_id), shard.name) from opened.error
        conn, driver = opened.conn, opened.driver
        try:
            async with call_transaction(conn, driver, schema_name) as session:
                yield TenantScope(tenant_id, schema_name, session, shard.name)
        except Exception as exc:
            # A pooled connection to a shard that went down since, or lost
            # mid-call (the pool is invalidated: the next call connects
            # anew and fails within the connect timeout while it is down).
            if connection_lost(exc):
                log.warning("shard %s unreachable: %s", shard.name, exc)
                raise shard_unavailable(str(tenant_id), shard.name) from exc
            raise
        finally:
            await conn.close()

    def _discard(self, speculation: asyncio.Future[_Opened] | None) -> None:
        """A speculative transaction the call will not use: rolled back and
        its connection returned whenever it is ready, without the call
        waiting for it (a shard that is slow to answer delays no refusal)."""
        if speculation is None:
            return

        async def release() -> None:
            with contextlib.suppress(Exception):
                await _release(await speculation)

        self._in_background(release())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _record_admission(self, hint: _Hint, tenant_id: uuid.UUID, version: int, schema_version: str) -> None:
        """After the control plane admitted a call for a tenant on another
        database: that shard's admission row says so, in the background, so
        the tenant's next calls by id are admitted there in one round trip
        (tenantry.db.admission; a fence written meanwhile wins, and then the
        hint says not `by_row`)."""
        if (
            hint.by_row
            or version <= hint.fenced_through
            or tenant_id in self._admitting
            or len(self._admitting) >= MAX_ADMISSION_WRITES
        ):
            return
        self._admitting.add(tenant_id)

        async def write() -> None:
            try:
                async with hint.shard.engine.begin() as conn:
                    written = await conn.execute(admission.admit_statement(tenant_id, version, schema_version))
                hint.by_row = written.rowcount == 1
                if not hint.by_row:
                    hint.fenced_through = version
            except (SQLAlchemyError, OSError, TimeoutError) as exc:  # the next admission tries again
                log.debug("could not record tenant %s's admission on shard %s: %s", tenant_id, hint.shard.name, exc)
            finally:
                self._admitting.discard(tenant_id)

        self._in_background(write())

    def _shard(self, tenant_id: str, name: str) -> Shard:
        try:
            return self._shards[name]
        except UnknownShardError:
            # Placed on a shard this API's TENANTRY_SHARDS does not list (a
            # replica configured differently): not the caller's fault.
            log.error("tenant %s is on shard %r, which TENANTRY_SHARDS does not list", tenant_id, name)
            raise shard_unavailable(tenant_id, name) from None

    async def _begin_on(self, shard: Shard, sql: str = "BEGIN") -> _Opened:
        """A connection to `shard` with a transaction open on it by `sql`
        (`admitted`: its status was "SELECT 1"), or why not (`error`: the
        shard cannot be reached; only its own tenants' calls are refused,
        SHARD_UNAVAILABLE)."""
        try:
            conn = await shard.engine.connect()
        except (DBAPIError, OSError, TimeoutError) as exc:
            return _Opened(shard, error=exc)
        try:
            driver = await unscoped_connection(conn)
            status = await open_transaction(conn, driver, sql)
        except (DBAPIError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ApiError) as exc:
            await conn.close()
            if isinstance(exc, ApiError) and not connection_lost(exc):
                raise
            return _Opened(shard, error=exc)
        except BaseException:
            await conn.close()
            raise
        return _Opened(shard, conn, driver, admitted=status == "SELECT 1")

    async def explain_failure(self, scope: TenantScope, exc: DBAPIError) -> ApiError | None:
        """A database error inside an admitted tenant-scoped call. A schema that
        vanished mid-request means the tenant was deleted under it; a missing
        table or column in a schema that exists is a schema-version problem
        (TENANT_SCHEMA_OUTDATED), never "deleted". Otherwise the tenant's
        current state explains the error, or None when the tenant is still
        ACTIVE and the error is another matter."""
        explained = await self._explain(scope, exc)
        if explained is not None:
            # Admitted by a shard's row that no longer holds (a restored
            # backup, a move or purge under the call): ask the control plane
            # again next time.
            self._remote_hints.pop(scope.tenant_id, None)
        return explained

    async def _explain(self, scope: TenantScope, exc: DBAPIError) -> ApiError | None:
        tenant_id = str(scope.tenant_id)
        sqlstate = pg_error(exc).sqlstate
        try:
            async with self._sessions() as session:
                row = (await session.execute(tenant_sql.state_of(scope.tenant_id))).one_or_none()
            if row is None:
                return _tenant_deleted(tenant_id)
            state, purge_time, schema_version, shard_name, moving = row
            if moving or self._shards[shard_name].engine is not self._shards[scope.shard].engine:
                # Its move switched (or is switching) shards under this call:
                # the old copy is locked or gone. Retrying reaches the new one.
                return tenant_moving(tenant_id)
            if sqlstate == INVALID_SCHEMA_NAME:
                return _tenant_deleted(tenant_id)
            if sqlstate in SCHEMA_OBJECT_MISSING_SQLSTATES:
                async with self._shards[scope.shard].engine.connect() as conn:
                    if not await conn.scalar(tenant_sql.schema_exists(scope.schema_name)):
                        return _tenant_deleted(tenant_id)
        except (DBAPIError, UnknownShardError):
            return None
        refused = gate_error(tenant_id, state, purge_time, schema_version, self._oldest_revision)
        if refused is None and sqlstate in SCHEMA_OBJECT_MISSING_SQLSTATES:
            # The row says the schema is recent enough, its catalog disagrees.
            log.error("tenant %s schema lacks an object at revision %s", tenant_id, schema_version)
            return schema_outdated(tenant_id, schema_version, self._oldest_revision)
        return refused


# Connection exceptions, and the server shutting down or not accepting connections yet.
_CONNECTION_LOST_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` means the database behind the call's connection could not
    be reached (as opposed to a statement that failed on a live one)."""
    if isinstance(exc, ApiError):
        return exc.reason == "DATABASE_UNAVAILABLE"  # driver_call's verdict
    if isinstance(exc, DBAPIError):
        sqlstate = pg_error(exc).sqlstate or ""
        return exc.connection_invalidated or sqlstate.startswith(_CONNECTION_LOST_SQLSTATES)
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError)


def _tenant_deleted(tenant_id: str) -> ApiError:
    return not_found("TENANT_DELETED", f"tenant {tenant_id} was deleted", tenant_id=tenant_id)


def schema_outdated(tenant_id: str, schema_version: str, oldest_revision: str) -> ApiError:
    return failed_precondition(
        "TENANT_SCHEMA_OUTDATED",
        f"tenant {tenant_id}'s schema is at revision {schema_version or 'none'}; this API needs {oldest_revision} "
        "or later (run `tenantry-migrate tenants`)",
        tenant_id=tenant_id,
        schema_version=schema_version,
        required_revision=oldest_revision,
    )


def tenant_moving(tenant_id: str) -> ApiError:
    return unavailable(
        "TENANT_MOVING",
        f"tenant {tenant_id} is switching shards; retry shortly",
        retry_after=MOVING_RETRY_AFTER_SECONDS,
        tenant_id=tenant_id,
    )


def shard_unavailable(tenant_id: str, shard: str) -> ApiError:
    return unavailable(
        "SHARD_UNAVAILABLE",
        f"the database holding tenant {tenant_id} is unavailable, retry later",
        tenant_id=tenant_id,
        shard=shard,
    )


def gate_error(
    tenant_id: str,
    state: str,
    purge_time: datetime | None = None,
    schema_version: str | None = None,
    oldest_revision: str = OLDEST_SERVED_TENANT_REVISION,
    moving: bool = False,
) -> ApiError | None:
    """Why a tenant in `state` (its schema at `schema_version`, when known;
    `moving`: in its move's final switch) may not serve tenant-scoped calls
    (None: it may)."""
    if state in (TenantState.ACTIVE, TenantState.SUSPENDED) and moving:
        return tenant_moving(tenant_id)
    if state == TenantState.ACTIVE:
        if schema_version is not None and tenant_sql.schema_is_behind(schema_version, oldest_revision):
            return schema_outdated(tenant_id, schema_version, oldest_revision)
        return None
    if state == TenantState.CREATING:
        return failed_precondition(
            "TENANT_NOT_READY", f"tenant {tenant_id} is still being provisioned", tenant_id=tenant_id
        )
    if state == TenantState.FAILED:
        return failed_precondition("TENANT_FAILED", f"tenant {tenant_id} failed to provision", tenant_id=tenant_id)
    if state == TenantState.SUSPENDED:
        return failed_precondition("TENANT_SUSPENDED", f"tenant {tenant_id} is suspended", tenant_id=tenant_id)
    if state == TenantState.DELETING:
        # Soft-deleted: recoverable (UndeleteTenant) until purge_time.
        when = purge_time.isoformat() if purge_time is not None else ""
        return failed_precondition(
            "TENANT_DELETING",
            f"tenant {tenant_id} is deleted; its data is purged at {when or 'once'}",
            tenant_id=tenant_id,
            purge_time=when,
        )
    return _tenant_deleted(tenant_id)

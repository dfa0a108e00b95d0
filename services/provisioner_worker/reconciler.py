"""The reconciler: finishes what a crash, an outage or a lost start left behind.

Run by a Temporal Schedule (see `schedule.py`); each run is one activity that
compares the database's record of operations with Temporal's, and every shard
database's catalog with the control plane's tenants (a shard that is down is
reported and skipped: the others are still reconciled).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from provisioner_worker.metrics import RECONCILER_FINDINGS, TENANT_SCHEMAS
from tenantry.db import operations as operation_sql
from tenantry.db import tenants as tenant_sql
from tenantry.db.shards import Shards
from tenantry.migrations import tenant_head_revision
from tenantry.observability import SHARD_UP
from tenantry.operation_starter import OperationRef, OperationStarter
from tenantry.schema_names import is_tenant_schema_name
from tenantry.states import OperationKind, OperationState, TenantState
from tenantry.workflow_contract import TEMPORAL_CALL_TIMEOUT, ReconcileInput

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    started: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    orphan_schemas: list[str] = field(default_factory=list)
    orphan_schema_count: int = 0
    # Deletion workflows woken because their tenant's purge is overdue.
    woken: list[str] = field(default_factory=list)
    # Request records older than tenant_sql.REQUEST_RECORD_RETENTION, deleted.
    forgotten_request_records: int = 0
    # Live tenants whose schema is below the tenant lineage's head (a rollout
    # is due: `tenantry-migrate tenants`), and live tenants without a schema
    # (a few ids of each; the counts are complete).
    schemas_behind_head: list[str] = field(default_factory=list)
    schemas_behind_head_count: int = 0
    tenants_without_schema: list[str] = field(default_factory=list)
    tenants_without_schema_count: int = 0
    # Per shard database ("a+b" when several shard names share one): the
    # orphan schemas found in its catalog (all of them also in orphan_schemas).
    orphan_schemas_by_shard: dict[str, list[str]] = field(default_factory=dict)
    # Shards whose database could not be read this run (their schemas went
    # unchecked; everything else was reconciled).
    shards_down: list[str] = field(default_factory=list)
    # Shards tenants are placed on that this worker's TENANTRY_SHARDS does not
    # list: their schemas cannot be checked.
    unconfigured_shards: list[str] = field(default_factory=list)


class ReconcilerActivities:
    def __init__(
        self, engine: AsyncEngine, client: Client, starter: OperationStarter, shards: Shards | None = None
    ) -> None:
        self._engine = engine
        self._shards = shards or Shards.single(engine)
        self._client = client
        self._starter = starter

    @activity.defn(name="reconcile")
    async def reconcile(self, input: ReconcileInput) -> ReconcileReport:
        report = ReconcileReport()
        await self._start_stale_pending(input, report)
        await self._recover_lost_running(report)
        await self._wake_overdue_purges(report)
        await self._forget_old_request_records(report)
        await self._find_schema_drift(report)
        for kind, found in (
            ("started", report.started),
            ("restarted", report.restarted),
            ("cancelled", report.cancelled),
            ("woken", report.woken),
            ("orphan_schema", report.orphan_schemas),
        ):
            RECONCILER_FINDINGS.labels(kind).inc(len(found))
        if report.started or report.restarted or report.cancelled or report.woken or report.orphan_schemas:
            log.warning(
                "reconciler: started=%d restarted=%d cancelled=%d woken=%d orphan_schemas=%d %s",
                len(report.started),
                len(report.restarted),
                len(report.cancelled),
                len(report.woken),
                len(report.orphan_schemas),
                report.orphan_schemas[:20],
            )
        if report.schemas_behind_head_count or report.tenants_without_schema_count:
            log.warning(
                "reconciler: %d live tenants below tenant revision %s %s; %d live tenants without a schema %s",
                report.schemas_behind_head_count,
                tenant_head_revision(),
                report.schemas_behind_head,
                report.tenants_without_schema_count,
                report.tenants_without_schema,
            )
        return report

    async def _find_schema_drift(self, report: ReconcileReport) -> None:
        """Schemas behind head, orphan schemas, live tenants without a schema."""
        await self._find_schemas_behind_head(report)
        await self._check_shards(report)

    async def _find_schemas_behind_head(self, report: ReconcileReport) -> None:
        """From the control plane's record (Tenant.schema_version), per shard."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(tenant_sql.BEHIND_HEAD_BY_SHARD, {"head": tenant_head_revision()})).all()
        per_shard = Counter(shard for _, shard in rows)
        report.schemas_behind_head, report.schemas_behind_head_count = [str(i) for i, _ in rows[:20]], len(rows)
        for shard in sorted(set(per_shard) | set(self._shards.names)):
            TENANT_SCHEMAS.labels("behind_head", shard).set(per_shard.get(shard, 0))

    async def _check_shards(self, report: ReconcileReport) -> None:
        """Orphan schemas and live tenants without a schema, on every shard
        database. A database that cannot be read is reported (log,
        tenantry_shard_up 0, report.shards_down) and the others are still
        checked."""
        for label, names, engine in self._shard_databases():
            try:
                orphans, missing = await self._check_shard_database(names, engine)
            except Exception as exc:  # noqa: BLE001 - any failure of one shard is reported the same way
                log.error(
                    "reconciler: shard %s unreachable, its schemas not checked: %s: %s",
                    label,
                    type(exc).__name__,
                    exc,
                    extra={"shard": label},
                )
                report.shards_down.extend(names)
                for name in names:
                    SHARD_UP.labels(name).set(0)
                continue
            for name in names:
                SHARD_UP.labels(name).set(1)
            report.orphan_schemas.extend(orphans)
            if orphans:
                report.orphan_schemas_by_shard[label] = orphans
                log.warning(
                    "reconciler: %d orphan schemas on shard %s %s",
                    len(orphans),
                    label,
                    orphans[:20],
                    extra={"shard": label},
                )
            report.tenants_without_schema.extend(str(tenant_id) for tenant_id, _ in missing)
            report.tenants_without_schema_count += len(missing)
            per_shard = Counter(shard for _, shard in missing)
            for name in names:
                TENANT_SCHEMAS.labels("missing", name).set(per_shard.get(name, 0))
            TENANT_SCHEMAS.labels("orphan", label).set(len(orphans))
            if missing:
                log.warning(
                    "reconciler: %d live tenants without a schema on shard %s %s",
                    len(missing),
                    label,
                    [str(i) for i, _ in missing[:20]],
                    extra={"shard": label},
                )
        report.orphan_schemas.sort()
        report.orphan_schema_count = len(report.orphan_schemas)
        report.tenants_without_schema = report.tenants_without_schema[:20]
        async with self._engine.connect() as conn:
            report.unconfigured_shards = list(
                (await conn.execute(tenant_sql.SHARDS_OTHER_THAN, {"shards": self._shards.names})).scalars()
            )
        if report.unconfigured_shards:
            log.error(
                "reconciler: tenants are placed on shards this worker's TENANTRY_SHARDS does not list: %s",
                report.unconfigured_shards,
            )

    def _shard_databases(self) -> list[tuple[str, list[str], AsyncEngine]]:
        """(label, shard names, engine) per database holding tenant schemas:
        the local shards share the control plane's; remote shards naming the
        same URL share one."""
        groups: dict[str, tuple[list[str], AsyncEngine]] = {}
        for name in self._shards.names:
            groups.setdefault(self._shards.database_of(name), ([], self._shards[name].engine))[0].append(name)
        return [("+".join(sorted(names)), sorted(names), engine) for names, engine in groups.values()]

    async def _check_shard_database(
        self, shards: list[str], engine: AsyncEngine
    ) -> tuple[list[str], list[tuple[uuid.UUID, str]]]:
        """(orphan schemas, live tenants without a schema as (id, shard)) of
        the database serving `shards`. Two databases, so the reads are
        ordered to never report what a concurrent step just did: the live
        tenants before the catalog (a tenant is live only once its schema was
        committed), the catalog before the owners (a schema is created only
        for a tenant already registered)."""
        async with self._engine.connect() as conn:
            live = (await conn.execute(tenant_sql.LIVE_ON_SHARDS, {"shards": shards})).all()
        async with engine.connect() as shard_conn:
            schemas = list((await shard_conn.execute(tenant_sql.TENANT_SCHEMAS_IN_CATALOG)).scalars())
        async with self._engine.connect() as conn:
            orphans = [
                name
                for name in (
                    await conn.execute(tenant_sql.ORPHANS_AMONG, {"schemas": schemas, "shards": shards})
                ).scalars()
                if is_tenant_schema_name(name)
            ]
        present = set(schemas)
        missing = [(row.id, row.shard) for row in live if row.schema_name not in present]
        return orphans, missing

    async def _open_operations(
        self, state: OperationState, older_than_seconds: float
    ) -> list[tuple[OperationRef, str]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(operation_sql.STALE_OPERATIONS, {"state": state, "age": older_than_seconds})
            return [
                (
                    OperationRef(r.workflow_id, r.kind, r.tenant_id, r.admin_user_id, r.source_shard, r.target_shard),
                    r.state,
                )
                for r in rows
            ]

    def _still_wanted(self, operation: OperationRef, tenant_state: str) -> bool:
        if operation.kind == OperationKind.PROVISION:
            return tenant_state == TenantState.CREATING
        if operation.kind == OperationKind.MOVE:
            # Its workflow decides (refuses, rolls back or finishes), and
            # clears the moving flag a stopped move may have left set.
            return True
        return tenant_state in (TenantState.DELETING, TenantState.DELETED)

    async def _set_state(
        self, workflow_id: str, from_state: OperationState, to_state: OperationState, error: str = ""
    ) -> bool:
        """Conditional transition; False when another path moved the operation first."""
        async with self._engine.begin() as conn:
            result = await conn.execute(operation_sql.transition(workflow_id, (from_state,), to_state, error))
        return bool(result.rowcount)

    async def _start_stale_pending(self, input: ReconcileInput, report: ReconcileReport) -> None:
        for operation, tenant_state in await self._open_operations(
            OperationState.PENDING, input.pending_threshold_seconds
        ):
            async with self._isolated(operation):
                if not self._still_wanted(operation, tenant_state):
                    if await self._set_state(operation.workflow_id, OperationState.PENDING, OperationState.CANCELLED):
                        report.cancelled.append(operation.workflow_id)
                elif await self._starter.start(operation):
                    report.started.append(operation.workflow_id)

    async def _recover_lost_running(self, report: ReconcileReport) -> None:
        """RUNNING operations whose workflow is gone or closed without finishing them."""
        for operation, tenant_state in await self._open_operations(OperationState.RUNNING, 30.0):
            async with self._isolated(operation):
                await self._recover(operation, tenant_state, report)

    async def _recover(self, operation: OperationRef, tenant_state: str, report: ReconcileReport) -> None:
        try:
            handle = self._client.get_workflow_handle(operation.workflow_id)
            status = (await handle.describe(rpc_timeout=TEMPORAL_CALL_TIMEOUT)).status
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            status = None
        if status == WorkflowExecutionStatus.RUNNING:
            return
        if self._still_wanted(operation, tenant_state):
            # Every step is idempotent, so running the workflow again is safe.
            if await self._set_state(
                operation.workflow_id, OperationState.RUNNING, OperationState.PENDING
            ) and await self._starter.start(operation):
                report.restarted.append(operation.workflow_id)
        else:
            # Only provisioning of a tenant deleted meanwhile ends up here: the
            # deletion made it moot, as cancel_provisioning records it too.
            reason = "workflow no longer exists" if status is None else f"workflow closed as {status.name}"
            if await self._set_state(operation.workflow_id, OperationState.RUNNING, OperationState.CANCELLED, reason):
                report.cancelled.append(operation.workflow_id)

    async def _wake_overdue_purges(self, report: ReconcileReport) -> None:
        """A deletion workflow sleeps until the purge time it read; a
        PurgeTenant whose wake-up signal was lost (Temporal down) would wait
        for that time. Wake the ones overdue (a wake-up is harmless)."""
        async with self._engine.connect() as conn:
            overdue = list((await conn.execute(operation_sql.OVERDUE_PURGES, {"age": 30.0})).scalars())
        for workflow_id in overdue:
            if await self._starter.recheck_purge(workflow_id):
                report.woken.append(workflow_id)

    async def _forget_old_request_records(self, report: ReconcileReport) -> None:
        async with self._engine.begin() as conn:
            result = await conn.execute(tenant_sql.forget_request_records(tenant_sql.REQUEST_RECORD_RETENTION))
        report.forgotten_request_records = result.rowcount

    @contextlib.asynccontextmanager
    async def _isolated(self, operation: OperationRef) -> AsyncIterator[None]:
        """One operation's trouble (Temporal or the database timing out) must not
        stop the pass: log it; the next run tries again."""
        try:
            yield
        except Exception:
            log.exception("reconciler: could not reconcile operation", extra={"workflow_id": operation.workflow_id})

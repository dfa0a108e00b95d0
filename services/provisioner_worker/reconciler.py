"""The reconciler: finishes what a crash, an outage or a lost start left behind.

Run by a Temporal Schedule (see `schedule.py`); each run is one activity that
compares the database's record of operations with Temporal's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from provisioner_worker.metrics import RECONCILER_FINDINGS, TENANT_SCHEMAS
from tenantry.db import operations as operation_sql
from tenantry.db import rollouts as rollout_sql
from tenantry.db import tenants as tenant_sql
from tenantry.db.shards import Shards
from tenantry.migrations import tenant_head_revision
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
        await self._find_orphan_schemas(report)
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
        async with self._engine.connect() as conn:
            behind = [
                str(i)
                for i in (await conn.execute(rollout_sql.SCHEMAS_BEHIND, {"head": tenant_head_revision()})).scalars()
            ]
            missing = [str(i) for i in (await conn.execute(rollout_sql.LIVE_WITHOUT_SCHEMA)).scalars()]
        report.schemas_behind_head, report.schemas_behind_head_count = behind[:20], len(behind)
        report.tenants_without_schema, report.tenants_without_schema_count = missing[:20], len(missing)
        TENANT_SCHEMAS.labels("behind_head").set(len(behind))
        TENANT_SCHEMAS.labels("missing").set(len(missing))

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

    async def _find_orphan_schemas(self, report: ReconcileReport) -> None:
        async with self._engine.connect() as conn:
            rows = await conn.execute(tenant_sql.ORPHAN_SCHEMAS)
            report.orphan_schemas = [name for (name,) in rows if is_tenant_schema_name(name)]
            report.orphan_schema_count = len(report.orphan_schemas)

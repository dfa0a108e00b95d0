"""Starting an operation's workflow after its row was committed.

Used by the API right after its commit and by the reconciler for operations
whose start never got through. A start is harmless to repeat (conflict policy
USE_EXISTING), and a failed or slow start only leaves the operation PENDING.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from tenantry.db import operations as operation_sql
from tenantry.states import OperationKind
from tenantry.workflow_contract import (
    DELETE_WORKFLOW,
    PROVISION_WORKFLOW,
    WORKFLOW_START_TIMEOUT,
    DeleteTenantInput,
    ProvisionTenantInput,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperationRef:
    workflow_id: str
    kind: str
    tenant_id: uuid.UUID
    admin_user_id: uuid.UUID


class OperationStarter:
    def __init__(
        self,
        client: Client,
        engine: AsyncEngine,
        task_queue: str,
        timeout: timedelta = WORKFLOW_START_TIMEOUT,
    ) -> None:
        self._client = client
        self._engine = engine
        self._task_queue = task_queue
        self._timeout = timeout

    async def start(self, operation: OperationRef) -> datetime | None:
        """Starts the workflow and marks the operation RUNNING, returning its
        start time. None when the operation is not (yet) RUNNING: Temporal did
        not accept the start in time, or the bookkeeping failed; it stays
        PENDING and the reconciler starts it again (a repeat is harmless).
        Never raises for either: the caller's change is already committed."""
        try:
            workflow_name, workflow_input = _workflow_for(operation)
            # Bounds the lazy client's connecting too, which rpc_timeout does
            # not; unlike wait_for, no extra task per call.
            async with asyncio.timeout(self._timeout.total_seconds()):
                await self._client.start_workflow(
                    workflow_name,
                    workflow_input,
                    id=operation.workflow_id,
                    task_queue=self._task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    rpc_timeout=self._timeout,
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here is handled the same way
            log.warning(
                "workflow start failed after commit; the reconciler will start it",
                extra={"workflow_id": operation.workflow_id, "error": f"{type(exc).__name__}: {exc}"},
            )
            return None
        try:
            # One statement: autocommit saves the BEGIN/COMMIT round trips.
            async with self._engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                started: datetime | None = await conn.scalar(
                    operation_sql.MARK_RUNNING, {"workflow_id": operation.workflow_id}
                )
        except Exception as exc:  # noqa: BLE001 - the workflow runs; only the bookkeeping lags
            log.warning(
                "workflow started but the operation could not be marked RUNNING",
                extra={"workflow_id": operation.workflow_id, "error": f"{type(exc).__name__}: {exc}"},
            )
            return None
        return started


def _workflow_for(operation: OperationRef) -> tuple[str, object]:
    tenant_id = str(operation.tenant_id)
    if operation.kind == OperationKind.DELETE:
        return DELETE_WORKFLOW, DeleteTenantInput(tenant_id=tenant_id)
    return PROVISION_WORKFLOW, ProvisionTenantInput(tenant_id=tenant_id, admin_user_id=str(operation.admin_user_id))

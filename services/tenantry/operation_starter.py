"""Starting an operation's workflow after its row was committed.

Used by the API right after its commit and by the reconciler for operations
whose start never got through. A start is harmless to repeat (conflict policy
USE_EXISTING), and a failed or slow start only leaves the operation PENDING.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from tenantry.states import OperationKind
from tenantry.workflow_contract import (
    DELETE_WORKFLOW,
    MOVE_WORKFLOW,
    PROVISION_WORKFLOW,
    RECHECK_PURGE_SIGNAL,
    WORKFLOW_START_TIMEOUT,
    DeleteTenantInput,
    MoveTenantInput,
    ProvisionTenantInput,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperationRef:
    workflow_id: str
    kind: str
    tenant_id: uuid.UUID
    admin_user_id: uuid.UUID
    # A MOVE's shards.
    source_shard: str = ""
    target_shard: str = ""


class OperationStarter:
    def __init__(
        self,
        client: Client,
        task_queue: str,
        timeout: timedelta = WORKFLOW_START_TIMEOUT,
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._timeout = timeout

    async def start(self, operation: OperationRef) -> bool:
        """Starts the operation's workflow; False when Temporal did not accept
        the start in time. Never raises for that: the caller's change is
        already committed, the operation stays PENDING (the worker's first
        activity marks it RUNNING) and the reconciler starts it again (a
        repeat is harmless)."""
        workflow_name, workflow_input = _workflow_for(operation)
        return await self._call(
            operation.workflow_id,
            "workflow start failed after commit; the reconciler will start it",
            self._client.start_workflow(
                workflow_name,
                workflow_input,
                id=operation.workflow_id,
                task_queue=self._task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                rpc_timeout=self._timeout,
            ),
        )

    async def recheck_purge(self, workflow_id: str) -> bool:
        """Wakes a deletion workflow waiting for its purge time, so it reads the
        tenant again now (PurgeTenant, UndeleteTenant). Best effort, like a
        start: the database already holds the change, and the workflow's own
        timer (or the reconciler, for an overdue purge) reaches the same end."""
        handle = self._client.get_workflow_handle(workflow_id)
        return await self._call(
            workflow_id,
            "could not wake the deletion workflow; its timer or the reconciler will",
            handle.signal(RECHECK_PURGE_SIGNAL, rpc_timeout=self._timeout),
        )

    async def _call(self, workflow_id: str, warning: str, call: Coroutine[Any, Any, object]) -> bool:
        try:
            # Bounds the lazy client's connecting too, which rpc_timeout does
            # not; unlike wait_for, no extra task per call.
            async with asyncio.timeout(self._timeout.total_seconds()):
                await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here is handled the same way
            log.warning(warning, extra={"workflow_id": workflow_id, "error": f"{type(exc).__name__}: {exc}"})
            return False
        return True


def _workflow_for(operation: OperationRef) -> tuple[str, object]:
    tenant_id = str(operation.tenant_id)
    if operation.kind == OperationKind.DELETE:
        return DELETE_WORKFLOW, DeleteTenantInput(tenant_id=tenant_id)
    if operation.kind == OperationKind.MOVE:
        return MOVE_WORKFLOW, MoveTenantInput(tenant_id, operation.source_shard, operation.target_shard)
    return PROVISION_WORKFLOW, ProvisionTenantInput(tenant_id=tenant_id, admin_user_id=str(operation.admin_user_id))

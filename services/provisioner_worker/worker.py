"""Assembling the worker: which workflows and activities it serves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from provisioner_worker.activities import TenantActivities
from provisioner_worker.heartbeat import HeartbeatInterceptor
from provisioner_worker.lock_waits import LockWaitRetryInterceptor
from provisioner_worker.move import MoveActivities
from provisioner_worker.reconciler import ReconcilerActivities
from provisioner_worker.rollout import RolloutActivities
from provisioner_worker.workflows import WORKFLOWS
from tenantry.db.shards import Shards
from tenantry.operation_starter import OperationStarter

# Each running activity holds at most one pooled connection (the worker's
# engine is sized for this in __main__), so activities never wait on the pool.
MAX_CONCURRENT_ACTIVITIES = 20


def activities_for(
    engine: AsyncEngine, client: Client, task_queue: str, shards: Shards | None = None
) -> list[Callable[..., Any]]:
    """`engine`: the control plane's; `shards`: the databases holding tenant
    schemas (None: the one default shard on `engine`'s database)."""
    shards = shards or Shards.single(engine)
    provisioning = TenantActivities(engine, client, shards)
    reconciler = ReconcilerActivities(engine, client, OperationStarter(client, task_queue), shards)
    rollout = RolloutActivities(engine, shards)
    move = MoveActivities(engine, shards)
    return [
        provisioning.provision_tenant,
        provisioning.fail_provisioning,
        provisioning.check_deletion_requested,
        provisioning.cancel_provisioning,
        provisioning.purge_tenant,
        provisioning.purge_when_due,
        reconciler.reconcile,
        rollout.begin_rollout,
        rollout.migrate_batch,
        rollout.finish_rollout,
        move.prepare_move,
        move.bulk_copy,
        move.switch,
        move.drop_old_copy,
        move.abort_move,
    ]


# The sandbox re-imports a workflow's modules for every run unless passed
# through; ours are deterministic and hold no mutable module state, and the
# re-import was about a fifth of the worker's CPU per provisioned tenant.
_WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("tenantry", "provisioner_worker")
)


def build_worker(
    client: Client,
    engine: AsyncEngine,
    task_queue: str,
    *,
    graceful_shutdown: timedelta = timedelta(seconds=30),
    activities: list[Callable[..., Any]] | None = None,
    shards: Shards | None = None,
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=activities if activities is not None else activities_for(engine, client, task_queue, shards),
        graceful_shutdown_timeout=graceful_shutdown,
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        # Outermost first: heartbeats go on while a lock wait is retried.
        interceptors=[HeartbeatInterceptor(), LockWaitRetryInterceptor()],
        workflow_runner=_WORKFLOW_RUNNER,
    )

"""What the API and the worker agree on: workflow names, ids and inputs.

The API starts workflows by name with these dataclasses and never imports the
worker's implementations.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

PROVISION_WORKFLOW = "TenantProvisioningWorkflow"
DELETE_WORKFLOW = "TenantDeletionWorkflow"
RECONCILE_WORKFLOW = "ReconcileWorkflow"

# Bounds how long an RPC waits for Temporal after its commit: the database
# already holds the intent, and the reconciler starts what could not be started.
WORKFLOW_START_TIMEOUT = timedelta(seconds=3)
# Deadline for any other single call to Temporal (describe, cancel).
TEMPORAL_CALL_TIMEOUT = timedelta(seconds=10)


def reconcile_schedule_id(task_queue: str) -> str:
    """One reconciler schedule per task queue, so deployments on other queues
    of the same namespace do not take each other's schedule over."""
    return f"tenantry-reconciler-{task_queue}"


def provision_workflow_id(tenant_id: uuid.UUID) -> str:
    """The workflow id of a tenant's first provisioning (RegisterTenant's operation)."""
    return f"tenant-provision-{tenant_id}"


def new_workflow_id(kind: str, tenant_id: uuid.UUID) -> str:
    """A fresh workflow id for another operation on the tenant (a retried
    provisioning, each deletion): a tenant has many operations over its
    life, each with its own id. Earlier releases used `tenant-delete-{id}` for
    the one deletion a tenant could have; those names keep resolving, since an
    operation is looked up by its stored id, never rebuilt."""
    return f"tenant-{kind.lower()}-{tenant_id}-{uuid.uuid4().hex[:12]}"


# The deletion workflow waits on a durable timer until the tenant's
# `purge_time`; this signal makes it look at the database again now
# (PurgeTenant brought the purge forward, or UndeleteTenant cancelled it).
RECHECK_PURGE_SIGNAL = "recheck_purge"


@dataclass(frozen=True)
class ProvisionTenantInput:
    tenant_id: str
    admin_user_id: str


@dataclass(frozen=True)
class DeleteTenantInput:
    tenant_id: str


@dataclass(frozen=True)
class ReconcileInput:
    # Operations PENDING for longer than this get their workflow started.
    pending_threshold_seconds: float = 10.0


MOVE_WORKFLOW = "TenantMoveWorkflow"


@dataclass(frozen=True)
class MoveTenantInput:
    """Move `tenant_id`'s schema from shard `source_shard` to `target_shard`
    (TENANTRY_SHARDS names, recorded on the MOVE operation when it was asked for)."""

    tenant_id: str
    source_shard: str
    target_shard: str


MIGRATE_WORKFLOW = "TenantFleetMigrationWorkflow"


def migrate_workflow_id(target_revision: str) -> str:
    """A fresh workflow id for a fleet rollout to `target_revision`."""
    return f"fleet-migrate-{target_revision}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class MigrateFleetInput:
    """A fleet rollout: every live tenant schema below `target_revision`, the
    first `canary` tenants one at a time (any failure there stops the
    rollout), then batches of `batch_size` tenants, `concurrency` at a time;
    stops once more than `max_failures` tenants failed."""

    target_revision: str
    canary: int = 1
    concurrency: int = 4
    max_failures: int = 0
    batch_size: int = 200

"""Workflow definitions. Deterministic: no I/O here, only activity calls."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

from tenantry.workflow_contract import (
    DELETE_WORKFLOW,
    PROVISION_WORKFLOW,
    RECONCILE_WORKFLOW,
    DeleteTenantInput,
    ProvisionTenantInput,
    ReconcileInput,
)

with workflow.unsafe.imports_passed_through():
    from provisioner_worker.activities import (
        TENANT_NOT_PROVISIONABLE,
        FailProvisioningInput,
        TenantActivities,
        TenantActivityInput,
    )
    from provisioner_worker.reconciler import ReconcilerActivities, ReconcileReport

# Provisioning gives up after a bounded number of attempts and compensates.
PROVISION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
)
# Deletion and compensation must eventually finish: retry until they do.
UNTIL_DONE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
STEP_TIMEOUT = timedelta(seconds=60)
# Activities heartbeat every 2 s while they run (see heartbeat.py): a step on a
# worker that died is retried after this, not after the whole STEP_TIMEOUT.
HEARTBEAT_TIMEOUT = timedelta(seconds=10)


@workflow.defn(name=PROVISION_WORKFLOW)
class TenantProvisioningWorkflow:
    @workflow.run
    async def run(self, input: ProvisionTenantInput) -> str:
        try:
            await workflow.execute_activity_method(
                TenantActivities.provision_tenant,
                input,
                start_to_close_timeout=STEP_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=PROVISION_RETRY,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                # Cancelled by a deletion: close as cancelled, deletion cleans up.
                raise
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == TENANT_NOT_PROVISIONABLE:
                # Deleted meanwhile: the deletion workflow owns the cleanup.
                return "abandoned"
            message = str(cause) if cause is not None else str(err)
            await workflow.execute_activity_method(
                TenantActivities.fail_provisioning,
                FailProvisioningInput(tenant_id=input.tenant_id, error_message=message),
                start_to_close_timeout=STEP_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=UNTIL_DONE_RETRY,
            )
            raise ApplicationError(f"provisioning failed: {message}", type="ProvisioningFailed") from err
        return "active"


@workflow.defn(name=DELETE_WORKFLOW)
class TenantDeletionWorkflow:
    @workflow.run
    async def run(self, input: DeleteTenantInput) -> str:
        tenant = TenantActivityInput(tenant_id=input.tenant_id)
        await workflow.execute_activity_method(
            TenantActivities.cancel_provisioning,
            tenant,
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=UNTIL_DONE_RETRY,
        )
        await workflow.execute_activity_method(
            TenantActivities.purge_tenant,
            tenant,
            start_to_close_timeout=STEP_TIMEOUT,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=UNTIL_DONE_RETRY,
        )
        return "deleted"


@workflow.defn(name=RECONCILE_WORKFLOW)
class ReconcileWorkflow:
    @workflow.run
    async def run(self, input: ReconcileInput) -> ReconcileReport:
        return await workflow.execute_activity_method(
            ReconcilerActivities.reconcile,
            input,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=3),
        )


WORKFLOWS = [TenantProvisioningWorkflow, TenantDeletionWorkflow, ReconcileWorkflow]

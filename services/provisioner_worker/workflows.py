"""Workflow definitions. Deterministic: no I/O here, only activity calls."""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import timedelta
from typing import TypedDict

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

from tenantry.workflow_contract import (
    DELETE_WORKFLOW,
    MIGRATE_WORKFLOW,
    MOVE_WORKFLOW,
    PROVISION_WORKFLOW,
    RECHECK_PURGE_SIGNAL,
    RECONCILE_WORKFLOW,
    DeleteTenantInput,
    MigrateFleetInput,
    MoveTenantInput,
    ProvisionTenantInput,
    ReconcileInput,
)

with workflow.unsafe.imports_passed_through():
    from provisioner_worker.activities import (
        DELETION_NOT_REQUESTED,
        TENANT_NOT_PROVISIONABLE,
        FailProvisioningInput,
        TenantActivities,
        TenantActivityInput,
        failure_detail,
        provisioning_failure_reason,
    )
    from provisioner_worker.move import (
        MOVE_REFUSED,
        AbortMoveInput,
        MoveActivities,
        MoveOutcome,
        move_failure_reason,
    )
    from provisioner_worker.reconciler import ReconcilerActivities, ReconcileReport
    from provisioner_worker.rollout import BatchInput, BatchResult, FinishRolloutInput, RolloutActivities
    from tenantry.states import OperationState

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
# Activities heartbeat every half of this while they run (heartbeat.py derives
# the interval from it): a step on a worker that died is retried after this,
# not after its whole start-to-close timeout.
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
# workflow.patched ids: histories recorded before a step existed replay without it.
CHECK_DELETION_REQUESTED_PATCH = "check-deletion-requested"
RETENTION_PATCH = "retention-timer"


class ActivityOptions(TypedDict):
    start_to_close_timeout: timedelta
    heartbeat_timeout: timedelta
    retry_policy: RetryPolicy


def step(retry: RetryPolicy, timeout: timedelta = STEP_TIMEOUT) -> ActivityOptions:
    """The options of every activity call: its timeout, the heartbeat timeout
    all activities share and its retry policy (`**step(...)` into the call)."""
    return {"start_to_close_timeout": timeout, "heartbeat_timeout": HEARTBEAT_TIMEOUT, "retry_policy": retry}


@workflow.defn(name=PROVISION_WORKFLOW)
class TenantProvisioningWorkflow:
    @workflow.run
    async def run(self, input: ProvisionTenantInput) -> str:
        try:
            await workflow.execute_activity_method(
                TenantActivities.provision_tenant,
                input,
                **step(PROVISION_RETRY),
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                # Cancelled by a deletion: close as cancelled, deletion cleans up.
                raise
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == TENANT_NOT_PROVISIONABLE:
                # Deleted meanwhile: the deletion workflow owns the cleanup.
                return "abandoned"
            # The cause's text (SQL and parameter values, for a database
            # error) is for the worker's log; clients get the stable reason.
            reason = provisioning_failure_reason(cause)
            detail = failure_detail(cause if cause is not None else err)
            await workflow.execute_activity_method(
                TenantActivities.fail_provisioning,
                FailProvisioningInput(tenant_id=input.tenant_id, error_message=detail, reason=reason),
                **step(UNTIL_DONE_RETRY),
            )
            raise ApplicationError(f"provisioning failed: {reason}", type="ProvisioningFailed") from err
        return "active"


@workflow.defn(name=DELETE_WORKFLOW)
class TenantDeletionWorkflow:
    """Cancels provisioning, then waits on a durable timer until the tenant's
    purge time and purges. The database decides: each wake-up asks
    `purge_when_due`, which purges when the purge is due and the deletion is
    still on, says how long to wait otherwise, and reports an undelete."""

    def __init__(self) -> None:
        self._recheck = False

    @workflow.signal(name=RECHECK_PURGE_SIGNAL)
    def recheck_purge(self) -> None:
        """PurgeTenant brought the purge forward, or UndeleteTenant cancelled it."""
        self._recheck = True

    @workflow.run
    async def run(self, input: DeleteTenantInput) -> str:
        tenant = TenantActivityInput(tenant_id=input.tenant_id)
        if workflow.patched(CHECK_DELETION_REQUESTED_PATCH):
            # Started directly on Temporal, not by DeleteTenant: refuse before
            # cancelling or dropping anything.
            try:
                await workflow.execute_activity_method(
                    TenantActivities.check_deletion_requested,
                    tenant,
                    **step(UNTIL_DONE_RETRY),
                )
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, ApplicationError) and cause.type == DELETION_NOT_REQUESTED:
                    raise ApplicationError(cause.message, type=DELETION_NOT_REQUESTED, non_retryable=True) from err
                raise
        await workflow.execute_activity_method(
            TenantActivities.cancel_provisioning,
            tenant,
            **step(UNTIL_DONE_RETRY, timeout=timedelta(minutes=2)),
        )
        if not workflow.patched(RETENTION_PATCH):
            await workflow.execute_activity_method(
                TenantActivities.purge_tenant,
                tenant,
                **step(UNTIL_DONE_RETRY),
            )
            return "deleted"
        while True:
            self._recheck = False
            outcome = await workflow.execute_activity_method(
                TenantActivities.purge_when_due,
                tenant,
                **step(UNTIL_DONE_RETRY),
            )
            if outcome.done:
                return "deleted" if outcome.purged else "undeleted"
            # Returns on a signal; raises TimeoutError when the purge time came.
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._recheck, timeout=timedelta(seconds=outcome.seconds_left))


@workflow.defn(name=RECONCILE_WORKFLOW)
class ReconcileWorkflow:
    @workflow.run
    async def run(self, input: ReconcileInput) -> ReconcileReport:
        return await workflow.execute_activity_method(
            ReconcilerActivities.reconcile,
            input,
            **step(RetryPolicy(maximum_attempts=3), timeout=timedelta(minutes=5)),
        )


# A batch of tenants may take long; its heartbeats (one per tenant) show it is alive.
BATCH_TIMEOUT = timedelta(minutes=30)
# Busy tenants (a lock not available in time) are retried this many times,
# waiting longer each time, before they count as failed.
BUSY_RETRIES = 4


@workflow.defn(name=MIGRATE_WORKFLOW)
class TenantFleetMigrationWorkflow:
    """A fleet rollout (OPERATION_KIND_MIGRATE): canaries one at a time, then
    batches in tenant-id order; stops when more than `max_failures` tenants
    failed (any canary failure stops it). The database holds the progress and
    each failed tenant's reason; every activity is idempotent (a tenant's
    upgrade checks its recorded revision under its row lock), so a worker
    killed mid-batch only repeats the check for tenants already done."""

    @workflow.run
    async def run(self, input: MigrateFleetInput) -> str:
        await workflow.execute_activity_method(RolloutActivities.begin_rollout, input, **step(UNTIL_DONE_RETRY))
        cursor = ""
        busy: list[str] = []
        if input.canary > 0:
            result = await self._batch(
                BatchInput(input, after="", limit=input.canary, concurrency=1, stop_at_first_failure=True)
            )
            cursor, busy = result.last_id, list(result.busy)
            if result.failed_total > 0:
                return await self._finish(OperationState.FAILED, "CANARY_FAILED: a canary tenant failed to upgrade")
        exhausted = input.canary > 0 and result.exhausted
        while not exhausted:
            result = await self._batch(
                BatchInput(input, after=cursor, limit=input.batch_size, concurrency=input.concurrency)
            )
            cursor, exhausted = result.last_id, result.exhausted
            busy.extend(result.busy)
            if result.failed_total > input.max_failures:
                return await self._finish(
                    OperationState.FAILED,
                    f"TOO_MANY_FAILURES: {result.failed_total} tenants failed (limit {input.max_failures})",
                )
        failed = result.failed_total
        for attempt in range(BUSY_RETRIES + 1):
            if not busy:
                break
            await workflow.sleep(timedelta(seconds=2**attempt))
            result = await self._batch(
                BatchInput(
                    input,
                    concurrency=input.concurrency,
                    tenant_ids=busy,
                    busy_is_failure=attempt == BUSY_RETRIES,
                )
            )
            busy, failed = list(result.busy), result.failed_total
        if failed > 0:
            return await self._finish(OperationState.FAILED, f"TENANTS_FAILED: {failed} tenants failed to upgrade")
        return await self._finish(OperationState.SUCCEEDED)

    async def _batch(self, batch: BatchInput) -> BatchResult:
        return await workflow.execute_activity_method(
            RolloutActivities.migrate_batch, batch, **step(UNTIL_DONE_RETRY, timeout=BATCH_TIMEOUT)
        )

    async def _finish(self, state: OperationState, message: str = "") -> str:
        await workflow.execute_activity_method(
            RolloutActivities.finish_rollout,
            FinishRolloutInput(state=state.value, error_message=message),
            **step(UNTIL_DONE_RETRY),
        )
        return state.value


# A move's copy steps: a few attempts (provisioning's), then the move rolls
# back (abort_move).
MOVE_RETRY = PROVISION_RETRY
# The switch may find the tenant's tables busy (MoveSwitchBusy) a few times
# before the move gives up and rolls back.
SWITCH_RETRY = dataclasses.replace(MOVE_RETRY, maximum_attempts=10)
# The bulk copy of a large tenant takes long; it heartbeats per chunk.
BULK_COPY_TIMEOUT = timedelta(hours=2)


@workflow.defn(name=MOVE_WORKFLOW)
class TenantMoveWorkflow:
    """MoveTenant (provisioner_worker.move): prepare the target, bulk copy,
    switch, drop the old copy. A copy step or the switch that fails for good
    rolls the move back (abort_move), unless the source was already renamed,
    in which case abort_move finishes the switch."""

    @workflow.run
    async def run(self, input: MoveTenantInput) -> MoveOutcome:
        try:
            prepared = await workflow.execute_activity_method(
                MoveActivities.prepare_move, input, **step(MOVE_RETRY, timeout=timedelta(minutes=2))
            )
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == MOVE_REFUSED:
                return MoveOutcome(state=OperationState.FAILED.value, reason=cause.message)
            return await self._abort(input, err)
        rows = 0
        window = None
        if not prepared.switched:
            try:
                rows = await workflow.execute_activity_method(
                    MoveActivities.bulk_copy, input, **step(MOVE_RETRY, timeout=BULK_COPY_TIMEOUT)
                )
                window = await workflow.execute_activity_method(
                    MoveActivities.switch, input, **step(SWITCH_RETRY, timeout=timedelta(minutes=10))
                )
            except ActivityError as err:
                return await self._abort(input, err)
        await workflow.execute_activity_method(MoveActivities.drop_old_copy, input, **step(UNTIL_DONE_RETRY))
        if window is None:
            return MoveOutcome(state=OperationState.SUCCEEDED.value, rows=rows)
        return MoveOutcome(
            state=OperationState.SUCCEEDED.value,
            rows=rows,
            window_start=window.window_start,
            window_end=window.window_end,
            window_seconds=window.window_seconds,
        )

    async def _abort(self, input: MoveTenantInput, err: ActivityError) -> MoveOutcome:
        reason = move_failure_reason(err.cause)
        outcome = await workflow.execute_activity_method(
            MoveActivities.abort_move,
            AbortMoveInput(input.tenant_id, input.source_shard, input.target_shard, reason),
            **step(UNTIL_DONE_RETRY),
        )
        if outcome == "switched":
            await workflow.execute_activity_method(MoveActivities.drop_old_copy, input, **step(UNTIL_DONE_RETRY))
            return MoveOutcome(state=OperationState.SUCCEEDED.value)
        return MoveOutcome(state=OperationState.FAILED.value, reason=reason)


WORKFLOWS = [
    TenantProvisioningWorkflow,
    TenantDeletionWorkflow,
    ReconcileWorkflow,
    TenantFleetMigrationWorkflow,
    TenantMoveWorkflow,
]

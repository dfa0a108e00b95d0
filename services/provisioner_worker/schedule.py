"""The reconciler's Temporal Schedule, created (or updated) idempotently at worker start."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from tenantry.workflow_contract import RECONCILE_WORKFLOW, TEMPORAL_CALL_TIMEOUT, ReconcileInput, reconcile_schedule_id


def reconcile_schedule(task_queue: str, interval_seconds: float, schedule_id: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RECONCILE_WORKFLOW,
            ReconcileInput(),
            id=f"{schedule_id}-run",
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=10),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=interval_seconds))]),
        # One reconciliation at a time; a slow run simply delays the next one.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_reconcile_schedule(
    client: Client, task_queue: str, interval_seconds: float, schedule_id: str | None = None
) -> None:
    schedule_id = schedule_id or reconcile_schedule_id(task_queue)
    schedule = reconcile_schedule(task_queue, interval_seconds, schedule_id)
    try:
        await client.create_schedule(schedule_id, schedule, rpc_timeout=TEMPORAL_CALL_TIMEOUT)
    except ScheduleAlreadyRunningError:
        # Several workers start concurrently: converge on the configured schedule.
        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id).update(replace, rpc_timeout=TEMPORAL_CALL_TIMEOUT)

"""The engine floor's worker: no-op workflows on their own task queue, run as
an OS process like provisioner-worker (`python -m bench.noop_worker`), with
as many activity slots."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

NOOP_WORKFLOW = "BenchNoopWorkflow"
NOOP_ACTIVITY_WORKFLOW = "BenchNoopActivityWorkflow"
# Takes what the provisioning workflow takes (ProvisionTenantInput, as JSON), so
# the engine floor's start carries the same payload as RegisterTenant's.
NOOP_PROVISION_WORKFLOW = "BenchNoopProvisionWorkflow"


@activity.defn(name="bench_noop")
async def noop_activity(tenant_id: str) -> str:
    return tenant_id


@workflow.defn(name=NOOP_WORKFLOW)
class NoopWorkflow:
    @workflow.run
    async def run(self, tenant_id: str) -> str:
        return tenant_id


@workflow.defn(name=NOOP_PROVISION_WORKFLOW)
class NoopProvisionWorkflow:
    @workflow.run
    async def run(self, operation: dict[str, str]) -> str:
        return operation["tenant_id"]


@workflow.defn(name=NOOP_ACTIVITY_WORKFLOW)
class NoopActivityWorkflow:
    @workflow.run
    async def run(self, tenant_id: str) -> str:
        return await workflow.execute_activity(noop_activity, tenant_id, start_to_close_timeout=timedelta(seconds=60))


async def serve() -> None:
    # Not at module level: the workflow sandbox re-imports this module.
    from provisioner_worker.worker import MAX_CONCURRENT_ACTIVITIES

    client = await Client.connect(os.environ["TENANTRY_TEMPORAL_ADDRESS"])
    worker = Worker(
        client,
        task_queue=os.environ["BENCH_TASK_QUEUE"],
        workflows=[NoopWorkflow, NoopProvisionWorkflow, NoopActivityWorkflow],
        activities=[noop_activity],
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        graceful_shutdown_timeout=timedelta(seconds=3),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve())

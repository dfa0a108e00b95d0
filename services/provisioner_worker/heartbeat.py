"""Every activity heartbeats while it runs, so a worker that dies mid-activity is
noticed within the heartbeat timeout instead of the whole start-to-close timeout."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

HEARTBEAT_INTERVAL_SECONDS = 2.0


class _HeartbeatingActivity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        async def beat() -> None:
            # Temporal times a missing heartbeat from the activity's start, so
            # the first one can wait a full interval: most steps are done by
            # then and never cost the server a heartbeat call.
            while True:
                await asyncio.sleep(HEARTBEAT_INTERVAL_SECONDS)
                activity.heartbeat()

        beating = asyncio.create_task(beat())
        try:
            return await super().execute_activity(input)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


class HeartbeatInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _HeartbeatingActivity(super().intercept_activity(next))

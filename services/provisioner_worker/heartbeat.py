"""Every activity heartbeats while it runs, so a worker that dies mid-activity is
noticed within the heartbeat timeout instead of the whole start-to-close timeout."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor


def heartbeat_interval(heartbeat_timeout: timedelta | None) -> timedelta | None:
    """Half the activity's heartbeat timeout (as Temporal's samples do), so a
    beat late by a whole interval still arrives in time; None without a timeout."""
    if not heartbeat_timeout:
        return None
    return heartbeat_timeout / 2


class _HeartbeatingActivity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        interval = heartbeat_interval(activity.info().heartbeat_timeout)
        if interval is None:
            return await super().execute_activity(input)

        async def beat(seconds: float) -> None:
            # Temporal times a missing heartbeat from the activity's start, so
            # the first one can wait a full interval: most steps are done by
            # then and never cost the server a heartbeat call.
            while True:
                await asyncio.sleep(seconds)
                activity.heartbeat()

        beating = asyncio.create_task(beat(interval.total_seconds()))
        try:
            return await super().execute_activity(input)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


class HeartbeatInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _HeartbeatingActivity(super().intercept_activity(next))

"""A lock wait that runs out is not a failed attempt.

Every activity transaction bounds its lock waits (tenantry.db.timeouts), so a
holder that never lets go (a frozen or vanished process: the server ends its
session after idle_in_transaction_session_timeout or the TCP keepalives) costs
a statement, not the whole step. But a failed attempt counts towards the
provisioning retry policy's maximum_attempts, after which the tenant is marked
FAILED, and Temporal's RetryPolicy cannot exempt an error type from that
count. So the worker re-runs the activity itself, inside the same attempt:
every activity is idempotent and does its database work in one transaction,
which the lock timeout rolled back, so running it again is what a Temporal
retry would do, minus the attempt. The heartbeat interceptor (outside this
one) keeps beating meanwhile; the activity's start-to-close timeout and
cancellation (a deletion) still end the loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from tenantry.db.timeouts import is_lock_timeout

log = logging.getLogger(__name__)

FIRST_PAUSE_SECONDS = 0.5
MAX_PAUSE_SECONDS = 5.0


class _RetryingLockWaits(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        pause = FIRST_PAUSE_SECONDS
        waits = 0
        while True:
            try:
                return await super().execute_activity(input)
            except Exception as exc:
                if not is_lock_timeout(exc):
                    raise
            waits += 1
            info = activity.info()
            log.warning(
                "activity %s gave up waiting for a lock (%d times); running it again in %.1fs",
                info.activity_type,
                waits,
                pause,
                extra={"workflow_id": info.workflow_id, "attempt": info.attempt},
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE_SECONDS)


class LockWaitRetryInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _RetryingLockWaits(super().intercept_activity(next))

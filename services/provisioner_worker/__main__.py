"""`provisioner-worker`: serves the provisioning task queue until SIGTERM/SIGINT,
then stops polling and lets running activities finish within the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from datetime import timedelta

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError

from provisioner_worker.liveness import keep_alive
from provisioner_worker.schedule import ensure_reconcile_schedule
from provisioner_worker.worker import build_worker
from tenantry.db.connection_budget import ConnectionNeed, check_shard_budgets
from tenantry.db.engine import create_engine
from tenantry.db.shards import Shards
from tenantry.process import start_process
from tenantry.settings import WorkerSettings, exit_with_config_error
from tenantry.temporal_connection import connect

log = logging.getLogger("provisioner_worker")


def _sdk_runtime(address: str | None) -> Runtime | None:
    """Temporal SDK metrics (task latencies, slots, polls) on their own endpoint."""
    if address is None:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))


async def serve(settings: WorkerSettings) -> None:
    grace_seconds = settings.shutdown_grace_seconds
    # Before the SDK runtime exists (see the os._exit below).
    need = ConnectionNeed(settings.db_pool_size, settings.db_max_overflow)
    # The control plane's pool, and one more of the same size per shard on another database.
    await check_shard_budgets("provisioner-worker", settings.database_url, need, settings.shards)
    try:
        runtime = _sdk_runtime(settings.sdk_metrics_address)
    except ValueError as exc:  # the SDK refuses the bind address
        exit_with_config_error(f"TENANTRY_SDK_METRICS_ADDRESS is not a listen address: {exc}")
    # Defaults: one connection per concurrent activity (MAX_CONCURRENT_ACTIVITIES
    # overflow), plus headroom for the reconciler.
    # The control plane's pool and each other shard's, alike.
    make_engine = functools.partial(
        create_engine,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        timeouts=settings.db_timeouts,
        # A killed worker's blocked DDL transaction ends within seconds.
        check_client_connection=True,
    )
    engine = make_engine(settings.database_url)
    shards = Shards(engine, settings.shards, make_engine, control_plane_url=settings.database_url)
    try:
        client = await connect(settings, runtime=runtime)
    except RuntimeError as exc:
        link = "over TLS" if settings.temporal_tls.enabled else "in plaintext"
        print(
            f"provisioner-worker: cannot reach Temporal at {settings.temporal_address} {link}: {exc}", file=sys.stderr
        )
        # Not SystemExit: the SDK runtime's threads abort the interpreter's
        # finalization after a failed connect (SIGABRT, "PyGILState_Release").
        # Nothing is open yet that needs closing.
        sys.stderr.flush()
        os._exit(1)
    worker = build_worker(
        client, engine, settings.task_queue, graceful_shutdown=timedelta(seconds=grace_seconds), shards=shards
    )
    try:
        await ensure_reconcile_schedule(client, settings.task_queue, settings.reconcile_interval_seconds)
    except RPCError as exc:
        print(f"provisioner-worker: cannot create the reconciler schedule: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with worker:
            alive = asyncio.create_task(keep_alive(settings.liveness_file))
            log.info("provisioner-worker polling", extra={"task_queue": settings.task_queue})
            await stop.wait()
            log.info("provisioner-worker stopping: finishing running activities for up to %.0fs", grace_seconds)
            alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await alive
    finally:
        await shards.dispose()
        await engine.dispose()


def main() -> None:
    settings = start_process("provisioner-worker", WorkerSettings.from_env)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

"""`tenant-api`: serves gRPC until SIGTERM/SIGINT, then drains in-flight calls."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from temporalio.client import Client

from tenant_api.server import start_api
from tenantry.db.engine import create_engine
from tenantry.settings import Settings, load_or_exit

log = logging.getLogger("tenant_api")

# Seconds in-flight RPCs get to finish after SIGTERM.
SHUTDOWN_GRACE_SECONDS = float(os.environ.get("TENANTRY_SHUTDOWN_GRACE_SECONDS", "10"))


async def serve(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    # Lazy: the API serves (and records intents) even while Temporal is down.
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace, lazy=True)
    try:
        api = await start_api(
            engine=engine,
            database_url=settings.database_url,
            client=client,
            task_queue=settings.task_queue,
            address=settings.grpc_address,
        )
    except (OSError, RuntimeError) as exc:
        print(f"tenant-api: cannot listen on {settings.grpc_address}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("tenant-api listening on %s", settings.grpc_address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("tenant-api stopping: draining in-flight calls for up to %.0fs", SHUTDOWN_GRACE_SECONDS)
    await api.stop(SHUTDOWN_GRACE_SECONDS)
    await engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_or_exit()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

"""`provisioner-worker`: serves the provisioning task queue until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from temporalio.client import Client

from provisioner_worker.schedule import ensure_reconcile_schedule
from provisioner_worker.worker import build_worker
from tenantry.db.engine import create_engine
from tenantry.settings import Settings, load_or_exit

log = logging.getLogger("provisioner_worker")


async def serve(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    try:
        client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    except RuntimeError as exc:
        print(f"provisioner-worker: cannot reach Temporal at {settings.temporal_address}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    worker = build_worker(client, engine, settings.task_queue)
    await ensure_reconcile_schedule(client, settings.task_queue, settings.reconcile_interval_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with worker:
            log.info("provisioner-worker polling task queue %s", settings.task_queue)
            await stop.wait()
            log.info("provisioner-worker stopping: finishing running activities")
    finally:
        await engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_or_exit()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

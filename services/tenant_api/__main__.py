"""`tenant-api`: serves gRPC until SIGTERM/SIGINT, then drains in-flight calls."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import grpc
from temporalio.client import Client

from tenant_api.server import start_api
from tenant_api.transport import listen_credentials, tls_settings_from
from tenantry.db.engine import create_engine
from tenantry.process import start_process
from tenantry.settings import Settings, SettingsError, exit_with_config_error

log = logging.getLogger("tenant_api")

DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"


async def serve(settings: Settings, grace_seconds: float, credentials: grpc.ServerCredentials | None) -> None:
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
            credentials=credentials,
        )
    except (OSError, RuntimeError) as exc:
        print(f"tenant-api: cannot listen on {settings.grpc_address}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info(
        "tenant-api listening on %s (%s)", settings.grpc_address, "TLS" if credentials is not None else "plaintext"
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("tenant-api stopping: draining in-flight calls for up to %.0fs", grace_seconds)
    await api.stop(grace_seconds)
    await engine.dispose()


def main() -> None:
    config = start_process("tenant-api", DEFAULT_METRICS_ADDRESS)
    try:
        # TENANTRY_TLS_* and TENANTRY_PLAINTEXT_BEHIND_PROXY: see tenant_api.transport.
        credentials = listen_credentials(config.settings.grpc_address, tls_settings_from(os.environ))
    except SettingsError as exc:
        exit_with_config_error(str(exc))
    asyncio.run(serve(config.settings, config.grace_seconds, credentials))


if __name__ == "__main__":
    main()

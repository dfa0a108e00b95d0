"""`tenant-api`: serves gRPC until SIGTERM/SIGINT, then drains in-flight calls."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from datetime import timedelta

import grpc

from tenant_api.authentication import JwksKeys, TokenVerifier
from tenant_api.pagination import PageTokens
from tenant_api.server import start_api
from tenant_api.transport import listen_credentials
from tenantry.db.connection_budget import API_LISTEN_CONNECTIONS, ConnectionNeed, check_shard_budgets
from tenantry.db.engine import create_engine
from tenantry.db.shards import Shards
from tenantry.process import start_process
from tenantry.settings import ApiSettings, SettingsError, exit_with_config_error
from tenantry.temporal_connection import connect

log = logging.getLogger("tenant_api")


async def serve(settings: ApiSettings, credentials: grpc.ServerCredentials | None) -> None:
    keys = JwksKeys.from_settings(settings.auth)
    # Load the signing keys now: a key set that cannot be read is logged at
    # start (calls get UNAVAILABLE AUTH_KEYS_UNAVAILABLE until it can be).
    await keys.refresh()
    verifier = TokenVerifier(settings.auth, keys)
    # One pool per database (the control plane's, each other shard's), each
    # checked against its server's free connections.
    await check_shard_budgets(
        "tenant-api",
        settings.database_url,
        ConnectionNeed(settings.db_pool_size, settings.db_max_overflow, direct=API_LISTEN_CONNECTIONS),
        settings.shards,
    )
    # The control plane's pool and each other shard's, alike.
    make_engine = functools.partial(
        create_engine,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        timeouts=settings.db_timeouts,
    )
    engine = make_engine(settings.database_url)
    shards = Shards(engine, settings.shards, make_engine, control_plane_url=settings.database_url)
    # Lazy: the API serves (and records intents) even while Temporal is down.
    client = await connect(settings, lazy=True)
    try:
        api = await start_api(
            engine=engine,
            client=client,
            task_queue=settings.task_queue,
            address=settings.grpc_address,
            verifier=verifier,
            page_tokens=PageTokens(settings.page_token_key),
            credentials=credentials,
            deletion_retention=timedelta(seconds=settings.deletion_retention_seconds),
            listen_url=settings.listen_database_url,
            shards=shards,
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
    log.info("tenant-api stopping: draining in-flight calls for up to %.0fs", settings.shutdown_grace_seconds)
    await api.stop(settings.shutdown_grace_seconds)
    await shards.dispose()
    await engine.dispose()


def main() -> None:
    settings = start_process("tenant-api", ApiSettings.from_env)
    try:
        credentials = listen_credentials(settings.grpc_address, settings.tls)
    except SettingsError as exc:
        exit_with_config_error(str(exc))
    asyncio.run(serve(settings, credentials))


if __name__ == "__main__":
    main()

"""Assembling and running the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api.authentication import TokenVerifier
from tenant_api.events import EventFeed, TenantEvents
from tenant_api.interceptors.access_log import AccessLogInterceptor
from tenant_api.interceptors.admission import AdmissionInterceptor
from tenant_api.interceptors.authentication import AuthenticationInterceptor
from tenant_api.interceptors.error_mapping import ErrorMappingInterceptor
from tenant_api.interceptors.tenant_gate import TenantGateInterceptor
from tenant_api.interceptors.tracing import RpcTracingInterceptor
from tenant_api.operations import MAX_WAITS, OperationNotifications, Operations
from tenant_api.pagination import PageTokens
from tenant_api.projects import Projects
from tenant_api.servicers import OperationServicer, ProjectServicer, TenantEventServicer, TenantServicer
from tenant_api.tenant_gate import TenantGate
from tenant_api.tenants import Tenants
from tenantry import tracing
from tenantry.db.engine import create_session_factory
from tenantry.db.shards import Shards
from tenantry.observability import SHARD_UP
from tenantry.operation_starter import OperationStarter
from tenantry.settings import DEFAULT_DELETION_RETENTION_SECONDS
from tenantry.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    operation_service_pb2,
    operation_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    tenant_service_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name,
    operation_service_pb2.DESCRIPTOR.services_by_name["OperationService"].full_name,
    project_service_pb2.DESCRIPTOR.services_by_name["ProjectService"].full_name,
    event_service_pb2.DESCRIPTOR.services_by_name["TenantEventService"].full_name,
)
# Everything the server registers: the API, health and reflection. Reflection
# lists these, and the access log serves only their methods: a service
# registered without being named here answers UNIMPLEMENTED.
SERVED_SERVICE_NAMES = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
# Message sizes, from the contract (design.md), not grpc's 4 MiB default.
# Requests: the largest valid one is a RegisterTenant / UpdateTenant carrying
# a tenant with 64 labels (key <= 63 + value <= 63 chars, ~132 bytes each on
# the wire: ~8.5 KiB), names and display names of <= 100 characters (<= 400
# bytes of UTF-8), an email (<= 254), ids, masks and page tokens (a few hundred
# bytes). That is under 12 KiB; 64 KiB leaves room for the contract to grow
# while a client can make the server buffer at most 64 KiB per call before the
# request is refused (grpc answers RESOURCE_EXHAUSTED itself; it cannot carry
# ErrorInfo, and no valid request gets there).
MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024
# Responses: the largest is a ListTenants page of 500 (pagination.MAX_PAGE_SIZE)
# tenants of ~10.5 KiB each at worst (64 labels ~8.5 KiB, display name <= 400 B,
# email <= 254 B, state message and ids, names, timestamps, etag ~1.5 KiB):
# ~5.3 MB. ListOperations and ListTenantEvents pages of 500 are far smaller.
# 16 MiB is three times that; tests/test_limits.py builds the worst page from
# the compiled contract and checks it still fits with room to spare.
MAX_SEND_MESSAGE_BYTES = 16 * 1024 * 1024
# Calls in flight per process (admission interceptor: RESOURCE_EXHAUSTED
# TOO_MANY_REQUESTS beyond it; health checks are never counted nor refused).
# It stays above the long-lived calls' own caps (operations.MAX_WAITS open
# WaitOperation calls, events.MAX_WATCHES open watches) so that waits and
# watches at their caps still leave room for short calls.
MAX_CONCURRENT_RPCS = 1024
# Calls grpc core has accepted but the event loop has not picked up yet. They
# queue in front of the admission interceptor while the loop is busy (a burst
# of thousands of calls). grpc's defaults (1000, and 3000 at most) start
# refusing them at random beyond 1000, with a bare CANCELLED (no ErrorInfo),
# before our admission can answer; 4096 (soft = hard: no random refusals
# below it) lets a burst of four times MAX_CONCURRENT_RPCS reach our own
# refusal. Each pending call holds its metadata and at most one flow-control
# window, so this stays in the range grpc's own hard limit allows.
MAX_PENDING_CALLS = 4096
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    # Refuse clients that ping more often than every 10 s without calls.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]


def method_paths(service_names: tuple[str, ...]) -> list[str]:
    """The gRPC paths (`/package.Service/Method`) of the named services' methods."""
    pool = descriptor_pool.Default()
    return [f"/{name}/{method.name}" for name in service_names for method in pool.FindServiceByName(name).methods]


def interceptor_chain(
    gate: TenantGate, verifier: TokenVerifier, admission: AdmissionInterceptor
) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """The interceptors, outermost first; each wraps the ones after it, so a
    call runs through them in this order and its outcome comes back in reverse.

    1. Access log: outermost, so it sees every call's final status, including
       the ones the error mapping produced from exceptions, and times all the
       work. It also holds the per-method handler table: each method's chain is
       built once, and unregistered paths stop here (UNIMPLEMENTED) without
       reaching anything inside or leaving anything behind.
    2. Admission: right inside the access log, so refusals are logged and
       counted like any call; outside everything else, so a call beyond the
       cap of calls in flight is refused (RESOURCE_EXHAUSTED
       TOO_MANY_REQUESTS, answered by the interceptor itself) before it costs
       a token verification or a database round trip. Health is exempt.
    3. Error mapping: turns whatever the inner interceptors and the servicer
       raise (domain errors, database failures, unparseable requests) into a
       deliberate status with ErrorInfo; so it must enclose all of them.
    4. Authentication: inside the error mapping, so anything unexpected in it
       still leaves as a deliberate status; outside the gate, so a call without
       a valid principal, or with a tenant-bound token naming another tenant, is
       refused before it costs a database round trip or reveals whether a
       tenant exists. Health and reflection pass without a token.
    5. Tenant gate: innermost, next to the servicer, because it opens the call's
       transaction (with the admission check, in one round trip) and commits it
       when the servicer returns: the transaction spans the servicer's work and
       nothing else.

    When the process traces (tenantry.tracing), an RPC span interceptor goes
    first, so all of the above (and the access log's line) is inside the span.
    """
    traced = tracing.tracer()
    return [
        *([RpcTracingInterceptor(traced)] if traced is not None else []),
        AccessLogInterceptor(method_paths(SERVED_SERVICE_NAMES)),
        admission,
        ErrorMappingInterceptor(),
        AuthenticationInterceptor(verifier),
        TenantGateInterceptor(gate),
    ]


DATABASE_PROBE_INTERVAL_SECONDS = 2.0
DATABASE_PROBE_TIMEOUT_SECONDS = 2.0
# Each shard's own health service name: `tenantry.shard.<name>` (a TENANTRY_SHARDS name).
SHARD_HEALTH_PREFIX = "tenantry.shard."


def shard_health_name(shard: str) -> str:
    """The grpc.health.v1 service name that reports one shard's database."""
    return f"{SHARD_HEALTH_PREFIX}{shard}"


async def database_reachable(engine: AsyncEngine) -> bool:
    try:
        async with asyncio.timeout(DATABASE_PROBE_TIMEOUT_SECONDS), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable now"
        return False


async def watch_database(
    engine: AsyncEngine,
    health_servicer: health_aio.HealthServicer,
    *,
    service_names: tuple[str, ...] = ("", *SERVICE_NAMES),
    shards: tuple[str, ...] = (),
    what: str = "database",
) -> None:
    """Health follows the database: `service_names` and each of `shards`'
    health names are NOT_SERVING (and `tenantry_shard_up` 0) while it cannot
    be reached. The control plane's watcher reports the API's services and the
    shards on its database; each other shard has a watcher of its own that
    reports that shard only, so a shard that is down never makes the API
    itself NOT_SERVING."""
    names = (*service_names, *(shard_health_name(shard) for shard in shards))
    serving: bool | None = None
    while True:
        reachable = await database_reachable(engine)
        if reachable != serving:
            if serving is not None or not reachable:
                log.warning("%s %s", what, "reachable again: SERVING" if reachable else "unreachable: NOT_SERVING")
            status = health_pb2.HealthCheckResponse.SERVING if reachable else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in names:
                await health_servicer.set(name, status)
            for shard in shards:
                SHARD_UP.labels(shard).set(1 if reachable else 0)
            serving = reachable
        await asyncio.sleep(DATABASE_PROBE_INTERVAL_SECONDS)


@dataclass
class RunningApi:
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    notifications: OperationNotifications
    events: EventFeed
    admission: AdmissionInterceptor
    operations: Operations
    background: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace: float) -> None:
        """Stops accepting calls, lets in-flight ones finish within `grace`
        seconds. Event watches never finish by themselves: they end first, cleanly."""
        await self.health.enter_graceful_shutdown()
        await self.events.close()
        await self.server.stop(grace)
        for task in self.background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.notifications.close()


async def start_api(
    *,
    engine: AsyncEngine,
    client: Client,
    task_queue: str,
    address: str,
    verifier: TokenVerifier,
    page_tokens: PageTokens,
    credentials: grpc.ServerCredentials | None = None,
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
    max_waits: int = MAX_WAITS,
    deletion_retention: timedelta = timedelta(seconds=DEFAULT_DELETION_RETENTION_SECONDS),
    listen_url: str | None = None,
    shards: Shards | None = None,
) -> RunningApi:
    """`verifier`: checks every call's bearer token (there is no way to turn
    that off). `page_tokens`: signs and checks the listings' page tokens (its
    key is TENANTRY_PAGE_TOKEN_KEY). `credentials`: TLS / mTLS (see
    tenant_api.transport); None serves plaintext. `max_concurrent_rpcs`,
    `max_waits`: the caps on calls in flight and on open WaitOperation calls
    (tests lower them). `deletion_retention`: how long a soft-deleted tenant's
    data is kept (TENANTRY_DELETION_RETENTION_SECONDS). `listen_url`: where
    the two LISTEN connections go (TENANTRY_LISTEN_DATABASE_URL; None: the
    engine's URL). `shards`: the databases holding tenant schemas (None: the
    one default shard on `engine`'s database); the caller disposes of them."""
    shards = shards or Shards.single(engine)
    sessions = create_session_factory(engine)
    direct = make_url(listen_url) if listen_url is not None else engine.url
    notifications = OperationNotifications(direct)
    events = EventFeed(engine, direct)
    admission = AdmissionInterceptor(max_concurrent_rpcs, exempt_services=(health.SERVICE_NAME,))
    operations = Operations(sessions, notifications, page_tokens, max_waits=max_waits)
    # No `maximum_concurrent_rpcs` here: see tenant_api.interceptors.admission.
    server = grpc.aio.server(
        interceptors=interceptor_chain(TenantGate(engine, sessions, shards=shards), verifier, admission),
        options=SERVER_OPTIONS,
    )
    starter = OperationStarter(client, task_queue)
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(
        TenantServicer(Tenants(engine, sessions, starter, page_tokens, deletion_retention, shards)), server
    )
    operation_service_pb2_grpc.add_OperationServiceServicer_to_server(OperationServicer(operations), server)
    project_service_pb2_grpc.add_ProjectServiceServicer_to_server(ProjectServicer(Projects(page_tokens)), server)
    event_service_pb2_grpc.add_TenantEventServiceServicer_to_server(
        TenantEventServicer(TenantEvents(sessions, events, page_tokens)), server
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVED_SERVICE_NAMES, server)
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    local = tuple(shards.local_names)
    for name in ("", *SERVICE_NAMES, *(shard_health_name(shard) for shard in local)):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    watchers = [
        asyncio.create_task(watch_database(engine, health_servicer, shards=local), name="watch-database"),
        *(
            asyncio.create_task(
                watch_database(
                    shard.engine, health_servicer, service_names=(), shards=(shard.name,), what=f"shard {shard.name}"
                ),
                name=f"watch-shard-{shard.name}",
            )
            for shard in shards.remote()
        ),
    ]
    return RunningApi(
        server=server,
        port=port,
        health=health_servicer,
        notifications=notifications,
        events=events,
        admission=admission,
        operations=operations,
        background=watchers,
    )

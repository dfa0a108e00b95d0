"""Assembling and running the gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api.interceptors import ErrorMappingInterceptor, TenantGateInterceptor
from tenant_api.operations import OperationNotifications, OperationService
from tenant_api.projects import ProjectService
from tenant_api.servicers import OperationServicer, ProjectServicer, TenantServicer
from tenant_api.tenant_gate import TenantGate
from tenant_api.tenants import TenantService
from tenantry.db.engine import create_session_factory
from tenantry.operation_starter import OperationStarter
from tenantry.v1 import (
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
)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Refuse clients that ping more often than every 10 s without calls.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]


@dataclass
class RunningApi:
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    notifications: OperationNotifications

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.notifications.close()


async def start_api(
    *, engine: AsyncEngine, database_url: str, client: Client, task_queue: str, address: str
) -> RunningApi:
    sessions = create_session_factory(engine)
    notifications = OperationNotifications(database_url)
    server = grpc.aio.server(
        interceptors=[ErrorMappingInterceptor(), TenantGateInterceptor(TenantGate(sessions))],
        options=SERVER_OPTIONS,
    )
    starter = OperationStarter(client, engine, task_queue)
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(
        TenantServicer(TenantService(sessions, starter)), server
    )
    operation_service_pb2_grpc.add_OperationServiceServicer_to_server(
        OperationServicer(OperationService(sessions, notifications)), server
    )
    project_service_pb2_grpc.add_ProjectServiceServicer_to_server(
        ProjectServicer(ProjectService(engine, sessions)), server
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningApi(server=server, port=port, health=health_servicer, notifications=notifications)

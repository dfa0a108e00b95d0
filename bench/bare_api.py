"""The read floor: the same ProjectServicer and ProjectService as tenant-api,
with no interceptors at all (no access log, no error mapping, no tenant gate),
run as an OS process like tenant-api (`python -m bench.bare_api`). The tenant
scope comes straight from the `x-tenant-id` header, without a database lookup,
on one pooled connection set up exactly as the gate sets up an admitted call:
one transaction per call, opened with a plain BEGIN where the gate opens it
with its admission check."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from tenant_api.call_transaction import call_transaction, open_transaction, unscoped_connection
from tenant_api.headers import TENANT_ID_HEADER
from tenant_api.pagination import PageTokens
from tenant_api.projects import Projects
from tenant_api.server import SERVER_OPTIONS
from tenant_api.servicers import ProjectServicer
from tenant_api.tenant_gate import TenantScope, current_tenant
from tenantry.db.engine import create_engine
from tenantry.schema_names import schema_name_for
from tenantry.v1 import project_service_pb2, project_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def tenant_id_from(context: Context) -> uuid.UUID:
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_ID_HEADER:
            return uuid.UUID(value if isinstance(value, str) else value.decode())
    raise ValueError(f"{TENANT_ID_HEADER} is required")


class UngatedProjectServicer(ProjectServicer):
    """Sets `current_tenant` itself, as the gate interceptor would, then delegates."""

    def __init__(self, engine: AsyncEngine) -> None:
        # Its own throwaway key: the baseline signs page tokens like the API does.
        super().__init__(Projects(PageTokens(secrets.token_bytes(32))))
        self._engine = engine

    @asynccontextmanager
    async def _scoped(self, context: Context) -> AsyncIterator[None]:
        tenant_id = tenant_id_from(context)
        schema_name = schema_name_for(tenant_id)
        async with self._engine.connect() as conn:
            driver = await unscoped_connection(conn)
            await open_transaction(conn, driver)
            async with call_transaction(conn, driver, schema_name) as session:
                token = current_tenant.set(TenantScope(tenant_id=tenant_id, schema_name=schema_name, session=session))
                try:
                    yield
                finally:
                    current_tenant.reset(token)

    async def GetProject(
        self, request: project_service_pb2.GetProjectRequest, context: Context
    ) -> project_service_pb2.GetProjectResponse:
        async with self._scoped(context):
            return await super().GetProject(request, context)

    async def ListProjects(
        self, request: project_service_pb2.ListProjectsRequest, context: Context
    ) -> project_service_pb2.ListProjectsResponse:
        async with self._scoped(context):
            return await super().ListProjects(request, context)


async def serve() -> None:
    engine = create_engine(os.environ["TENANTRY_DATABASE_URL"])
    server = grpc.aio.server(options=SERVER_OPTIONS)
    servicer = UngatedProjectServicer(engine)
    project_service_pb2_grpc.add_ProjectServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(os.environ["BENCH_GRPC_ADDRESS"])
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(serve())

"""AuthenticationInterceptor in a small real grpc.aio server (port 0): health and
reflection answer without a token; our methods (trivial generic handlers under
the real method paths, so the real contract's permissions apply) need a token
that verifies and grants the permission, and a tenant-bound token may name only
its own tenant. A refused call never reaches the handler."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from tenant_api.authentication import JwksKeys, Principal, TokenVerifier, current_principal
from tenant_api.headers import TENANT_ID_HEADER, TENANT_SLUG_HEADER
from tenant_api.interceptors.authentication import AuthenticationInterceptor
from tenantry.settings import AuthSettings
from tenantry_dev.tokens import DEV_AUDIENCE, DEV_ISSUER, SigningKey, ensure_signing_key, mint_token
from tests.stack import error_info, expect_error

TENANT = uuid.UUID("7d6a3f4e-2b1c-4e8a-9f0d-1c2b3a4d5e6f")
GET_PROJECT = "/tenantry.v1.ProjectService/GetProject"
CREATE_PROJECT = "/tenantry.v1.ProjectService/CreateProject"
GET_TENANT = "/tenantry.v1.TenantService/GetTenant"
UNDECLARED = "/tenantry.v1.TenantService/Undeclared"
STREAMING = "/tenantry.v1.TenantService/StreamTenants"
FOREIGN = "/other.v1.Service/Call"


@dataclass
class Server:
    key: SigningKey
    channel: grpc.aio.Channel
    seen: list[tuple[str, Principal]] = field(default_factory=list)

    async def call(self, method: str, metadata: Sequence[tuple[str, str]] = (), token: str | None = None) -> bytes:
        full = list(metadata)
        if token is not None:
            full.append(("authorization", f"Bearer {token}"))
        response: bytes = await self.channel.unary_unary(method, None, None)(b"ping", metadata=full, timeout=10)
        return response


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    key = ensure_signing_key(tmp_path / ".tenantry")
    assert key.jwks_file is not None
    settings = AuthSettings(DEV_ISSUER, DEV_AUDIENCE, key.jwks_file, None)
    verifier = TokenVerifier(settings, JwksKeys.from_settings(settings))
    seen: list[tuple[str, Principal]] = []

    def handler_for(method: str) -> grpc.RpcMethodHandler[Any, Any]:
        async def behavior(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            principal = current_principal.get()
            seen.append((method, principal))
            return principal.subject.encode()

        return grpc.unary_unary_rpc_method_handler(behavior)

    async def stream(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        yield b"never"

    grpc_server = grpc.aio.server(interceptors=[AuthenticationInterceptor(verifier)])
    handlers: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
    for method in (GET_PROJECT, CREATE_PROJECT, GET_TENANT, UNDECLARED, FOREIGN):
        service, name = method.lstrip("/").split("/")
        handlers.setdefault(service, {})[name] = handler_for(method)
    handlers["tenantry.v1.TenantService"]["StreamTenants"] = grpc.unary_stream_rpc_method_handler(stream)
    grpc_server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service, methods) for service, methods in handlers.items()]
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(("grpc.health.v1.Health", reflection.SERVICE_NAME), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Server(key, channel, seen)
    finally:
        await channel.close(None)
        await grpc_server.stop(None)


async def test_health_and_reflection_need_no_token(server: Server) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    replies = [
        reply
        async for reply in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    ]
    names = {s.name for s in replies[0].list_services_response.service}
    assert "grpc.health.v1.Health" in names


async def test_a_valid_token_reaches_the_servicer_with_its_principal(server: Server) -> None:
    token = mint_token(server.key, scope="tenants.get", subject="carol")
    assert await server.call(GET_TENANT, token=token) == b"carol"
    ((method, principal),) = server.seen
    assert method == GET_TENANT
    assert principal.subject == "carol"
    assert principal.permissions == {"tenants.get"}
    # The principal is the call's only: nothing leaks into the test's context.
    assert current_principal.get(None) is None


async def test_no_token_or_a_bad_one_is_unauthenticated(server: Server) -> None:
    await expect_error(server.call(GET_TENANT), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    await expect_error(
        server.call(GET_TENANT, [("authorization", "Basic dXNlcjpwYXNz")]),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_INVALID",
    )
    await expect_error(server.call(GET_TENANT, token="not.a.jwt"), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    expired = mint_token(server.key, ttl=timedelta(minutes=1), now=time.time() - 3600)
    await expect_error(server.call(GET_TENANT, token=expired), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    forged = jwt.encode(
        {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "x", "scope": "tenantry.admin", "exp": time.time() + 60},
        "a shared secret that is long enough for HS256",
        algorithm="HS256",
        headers={"kid": server.key.kid},
    )
    await expect_error(server.call(GET_TENANT, token=forged), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert server.seen == []


async def test_a_missing_permission_is_denied(server: Server) -> None:
    reader = mint_token(server.key, scope="projects.read")
    error = await expect_error(
        server.call(CREATE_PROJECT, [(TENANT_ID_HEADER, str(TENANT))], token=reader),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_MISSING",
    )
    assert error_info(error).metadata["permission"] == "projects.write"
    assert server.seen == []
    admin = mint_token(server.key)
    assert await server.call(CREATE_PROJECT, [(TENANT_ID_HEADER, str(TENANT))], token=admin) == b"dev"


async def test_methods_without_a_declared_permission_are_refused_even_to_admins(server: Server) -> None:
    admin = mint_token(server.key)
    for method in (UNDECLARED, FOREIGN):
        await expect_error(server.call(method, token=admin), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.channel.unary_stream(STREAMING, None, None)(
            b"", metadata=[("authorization", f"Bearer {admin}")]
        ).read()
    # Streams are guarded like unary calls: this one declares no permission either.
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "PERMISSION_MISSING"
    assert server.seen == []


async def test_tenant_bound_tokens_are_checked_before_the_tenant_is_looked_up(server: Server) -> None:
    bound = mint_token(server.key, scope="projects.read", tenant_id=TENANT, subject="tenant-user")
    assert await server.call(GET_PROJECT, [(TENANT_ID_HEADER, str(TENANT))], token=bound) == b"tenant-user"
    other = str(uuid.uuid4())
    await expect_error(
        server.call(GET_PROJECT, [(TENANT_ID_HEADER, other)], token=bound),
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_NOT_PERMITTED",
    )
    await expect_error(
        server.call(GET_PROJECT, [(TENANT_SLUG_HEADER, "acme")], token=bound),
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_NOT_PERMITTED",
    )
    assert len(server.seen) == 1
    # A token bound to no tenant may name any tenant (the gate decides whether it may run).
    unbound = mint_token(server.key, scope="projects.read", subject="anyone")
    assert await server.call(GET_PROJECT, [(TENANT_ID_HEADER, other)], token=unbound) == b"anyone"

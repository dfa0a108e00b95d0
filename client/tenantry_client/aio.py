"""AsyncTenantryClient: the Tenantry API over grpc.aio, typed end to end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from tenantry_client._channel import (
    DEFAULT_TIMEOUT,
    RetryPolicy,
    Tls,
    TokenSource,
    channel_options,
    channel_security,
)
from tenantry_client._plaintext import AioStreamToken, AioUnaryToken
from tenantry_client.errors import OperationFailed, error_from_rpc
from tenantry_client.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    operation_pb2,
    operation_service_pb2,
    operation_service_pb2_grpc,
    tenant_pb2,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)
Metadata = Sequence[tuple[str, str]]

# WaitOperation blocks at most this long per call on the server (design.md: 60 s).
WAIT_SLICE = 50.0
# A watch that lost its server reconnects after this long, doubling up to WATCH_MAX_BACKOFF.
WATCH_BACKOFF = 0.1
WATCH_MAX_BACKOFF = 5.0
# A watch resumes after these (a server going away ends streams UNAVAILABLE or,
# when it shuts down cleanly, OK); anything else is raised.
RESUMABLE = (grpc.StatusCode.UNAVAILABLE,)


class AsyncTenantryClient:
    """The Tenantry API. `token`: a bearer token, or a callable returning one
    (asked again shortly before the token expires). TLS by default (`tls`:
    roots, client certificate for mTLS); plaintext only with `plaintext=True`
    (a loopback target, or TLS ended by a proxy or sidecar in front). Every
    call gets `timeout` seconds unless it names its own, and calls failing
    UNAVAILABLE are retried by gRPC itself (`retry`).
    Use as `async with AsyncTenantryClient(...) as client:`, or close()."""

    def __init__(
        self,
        target: str,
        *,
        token: TokenSource | None = None,
        tls: Tls | None = None,
        plaintext: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token_refresh_margin: float = 60.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        security = channel_security(target, token, tls, plaintext, token_refresh_margin)
        self.timeout = timeout
        all_options = channel_options(retry or RetryPolicy(), [*security.options, *options])
        if security.credentials is not None:
            self.channel = grpc.aio.secure_channel(target, security.credentials, options=all_options)
        else:
            tokens = security.interceptor_tokens
            interceptors = [] if tokens is None else [AioUnaryToken(tokens), AioStreamToken(tokens)]
            self.channel = grpc.aio.insecure_channel(
                target,
                options=all_options,
                interceptors=interceptors,  # type: ignore[arg-type]  # grpc-stubs: a list of one kind only
            )
        self.tenants: tenant_service_pb2_grpc.TenantServiceAsyncStub = tenant_service_pb2_grpc.TenantServiceStub(
            self.channel
        )
        self.operations: operation_service_pb2_grpc.OperationServiceAsyncStub = (
            operation_service_pb2_grpc.OperationServiceStub(self.channel)
        )
        self.events: event_service_pb2_grpc.TenantEventServiceAsyncStub = event_service_pb2_grpc.TenantEventServiceStub(
            self.channel
        )

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> AsyncTenantryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
        metadata: Metadata = (),
    ) -> Response:
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout, metadata=tuple(metadata))
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    # --- tenants ---------------------------------------------------------------

    async def register_tenant(
        self,
        slug: str,
        display_name: str,
        admin_email: str,
        admin_display_name: str,
        *,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> tenant_service_pb2.RegisterTenantResponse:
        """RegisterTenant; `request_id` (default: a new UUID) makes a retry of
        this call return the first one's result."""
        request = tenant_service_pb2.RegisterTenantRequest(
            slug=slug,
            display_name=display_name,
            admin_email=admin_email,
            admin_display_name=admin_display_name,
            labels=dict(labels or {}),
            request_id=request_id or str(uuid.uuid4()),
        )
        return await self._call(self.tenants.RegisterTenant, request, timeout)

    async def get_tenant(
        self, tenant_id: str | None = None, *, slug: str | None = None, timeout: float | None = None
    ) -> tenant_pb2.Tenant:
        if (tenant_id is None) == (slug is None):
            raise ValueError("give exactly one of tenant_id and slug")
        request = (
            tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id)
            if tenant_id is not None
            else tenant_service_pb2.GetTenantRequest(slug=slug)
        )
        return (await self._call(self.tenants.GetTenant, request, timeout)).tenant

    async def list_tenants(
        self, request: tenant_service_pb2.ListTenantsRequest, *, timeout: float | None = None
    ) -> tenant_service_pb2.ListTenantsResponse:
        return await self._call(self.tenants.ListTenants, request, timeout)

    async def update_tenant(
        self, request: tenant_service_pb2.UpdateTenantRequest, *, timeout: float | None = None
    ) -> tenant_pb2.Tenant:
        if not request.request_id:
            request.request_id = str(uuid.uuid4())
        return (await self._call(self.tenants.UpdateTenant, request, timeout)).tenant

    async def delete_tenant(
        self, tenant_id: str, *, etag: str = "", request_id: str | None = None, timeout: float | None = None
    ) -> tenant_service_pb2.DeleteTenantResponse:
        request = tenant_service_pb2.DeleteTenantRequest(
            tenant_id=tenant_id, etag=etag, request_id=request_id or str(uuid.uuid4())
        )
        return await self._call(self.tenants.DeleteTenant, request, timeout)

    async def register_and_wait(
        self,
        slug: str,
        display_name: str,
        admin_email: str,
        admin_display_name: str,
        *,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        wait_timeout: float | None = None,
    ) -> tenant_pb2.Tenant:
        """Registers a tenant and waits until it is provisioned: the tenant as
        it is then (ACTIVE). Raises OperationFailed (its `reason`) if
        provisioning failed, TimeoutError after `wait_timeout` seconds."""
        response = await self.register_tenant(
            slug, display_name, admin_email, admin_display_name, labels=labels, request_id=request_id
        )
        await self.wait(response.operation, timeout=wait_timeout)
        return await self.get_tenant(response.tenant.id)

    # --- operations ------------------------------------------------------------

    async def get_operation(self, name: str, *, timeout: float | None = None) -> operation_pb2.Operation:
        request = operation_service_pb2.GetOperationRequest(name=name)
        return (await self._call(self.operations.GetOperation, request, timeout)).operation

    async def wait(
        self, operation: operation_pb2.Operation | str, *, timeout: float | None = None
    ) -> operation_pb2.Operation:
        """The operation once done (WaitOperation, again and again). Returns it
        when it SUCCEEDED; raises OperationFailed when it FAILED or was
        CANCELLED, TimeoutError when `timeout` seconds (None: no limit) pass."""
        name = operation if isinstance(operation, str) else operation.name
        if isinstance(operation, operation_pb2.Operation) and operation.done:
            return _succeeded(operation)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            slice_ = WAIT_SLICE if deadline is None else min(WAIT_SLICE, max(deadline - loop.time(), 0.0))
            request = operation_service_pb2.WaitOperationRequest(name=name)
            request.timeout.FromMilliseconds(max(int(slice_ * 1000), 1))
            current = (await self._call(self.operations.WaitOperation, request, slice_ + self.timeout)).operation
            if current.done:
                return _succeeded(current)
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"operation {name} not done after {timeout}s")

    # --- events ----------------------------------------------------------------

    async def watch_events(
        self, *, tenant_id: str = "", after: int | None = None
    ) -> AsyncIterator[event_service_pb2.TenantEvent]:
        """Tenant events (of `tenant_id`, or all) after sequence `after`, then
        live ones, for as long as the caller iterates. When the stream breaks
        (the server restarts, the connection drops) it resumes after the last
        event it delivered: no gap, no duplicate. With `after=None` it starts
        at the newest event; give `after` (e.g. 0) to have even a disconnect
        before the first event resume without a gap."""
        last = after
        backoff = WATCH_BACKOFF
        while True:
            request = event_service_pb2.WatchTenantEventsRequest(tenant_id=tenant_id)
            if last is not None:
                request.after_sequence = last
            # No deadline: a watch lasts. wait_for_ready: a reconnect waits for the server.
            call = self.events.WatchTenantEvents(request, wait_for_ready=True)
            try:
                async for response in call:
                    event = response.event
                    if last is not None and event.sequence <= last:
                        continue
                    last = event.sequence
                    backoff = WATCH_BACKOFF
                    yield event
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RESUMABLE:
                    raise error_from_rpc(exc) from None
            finally:
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_MAX_BACKOFF)


def _succeeded(operation: operation_pb2.Operation) -> operation_pb2.Operation:
    if operation.state != operation_pb2.OPERATION_STATE_SUCCEEDED:
        raise OperationFailed(operation)
    return operation

"""TenantryClient: the same API as AsyncTenantryClient, blocking."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
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
from tenantry_client._plaintext import SyncToken
from tenantry_client.aio import RESUMABLE, WAIT_SLICE, WATCH_BACKOFF, WATCH_MAX_BACKOFF, _succeeded
from tenantry_client.errors import error_from_rpc
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


class TenantryClient:
    """See AsyncTenantryClient: same constructor, same methods, blocking.
    Use as `with TenantryClient(...) as client:`, or close()."""

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
            self.channel = grpc.secure_channel(target, security.credentials, options=all_options)
        else:
            self.channel = grpc.insecure_channel(target, options=all_options)
            if security.interceptor_tokens is not None:
                self.channel = grpc.intercept_channel(self.channel, SyncToken(security.interceptor_tokens))
        self.tenants = tenant_service_pb2_grpc.TenantServiceStub(self.channel)
        self.operations = operation_service_pb2_grpc.OperationServiceStub(self.channel)
        self.events = event_service_pb2_grpc.TenantEventServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> TenantryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Response:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=tuple(metadata))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    # --- tenants ---------------------------------------------------------------

    def register_tenant(
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
        request = tenant_service_pb2.RegisterTenantRequest(
            slug=slug,
            display_name=display_name,
            admin_email=admin_email,
            admin_display_name=admin_display_name,
            labels=dict(labels or {}),
            request_id=request_id or str(uuid.uuid4()),
        )
        return self._call(self.tenants.RegisterTenant, request, timeout)

    def get_tenant(
        self, tenant_id: str | None = None, *, slug: str | None = None, timeout: float | None = None
    ) -> tenant_pb2.Tenant:
        if (tenant_id is None) == (slug is None):
            raise ValueError("give exactly one of tenant_id and slug")
        request = (
            tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id)
            if tenant_id is not None
            else tenant_service_pb2.GetTenantRequest(slug=slug)
        )
        return self._call(self.tenants.GetTenant, request, timeout).tenant

    def list_tenants(
        self, request: tenant_service_pb2.ListTenantsRequest, *, timeout: float | None = None
    ) -> tenant_service_pb2.ListTenantsResponse:
        return self._call(self.tenants.ListTenants, request, timeout)

    def update_tenant(
        self, request: tenant_service_pb2.UpdateTenantRequest, *, timeout: float | None = None
    ) -> tenant_pb2.Tenant:
        if not request.request_id:
            request.request_id = str(uuid.uuid4())
        return self._call(self.tenants.UpdateTenant, request, timeout).tenant

    def delete_tenant(
        self, tenant_id: str, *, etag: str = "", request_id: str | None = None, timeout: float | None = None
    ) -> tenant_service_pb2.DeleteTenantResponse:
        request = tenant_service_pb2.DeleteTenantRequest(
            tenant_id=tenant_id, etag=etag, request_id=request_id or str(uuid.uuid4())
        )
        return self._call(self.tenants.DeleteTenant, request, timeout)

    def register_and_wait(
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
        response = self.register_tenant(
            slug, display_name, admin_email, admin_display_name, labels=labels, request_id=request_id
        )
        self.wait(response.operation, timeout=wait_timeout)
        return self.get_tenant(response.tenant.id)

    # --- operations ------------------------------------------------------------

    def get_operation(self, name: str, *, timeout: float | None = None) -> operation_pb2.Operation:
        request = operation_service_pb2.GetOperationRequest(name=name)
        return self._call(self.operations.GetOperation, request, timeout).operation

    def wait(
        self, operation: operation_pb2.Operation | str, *, timeout: float | None = None
    ) -> operation_pb2.Operation:
        name = operation if isinstance(operation, str) else operation.name
        if isinstance(operation, operation_pb2.Operation) and operation.done:
            return _succeeded(operation)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            slice_ = WAIT_SLICE if deadline is None else min(WAIT_SLICE, max(deadline - time.monotonic(), 0.0))
            request = operation_service_pb2.WaitOperationRequest(name=name)
            request.timeout.FromMilliseconds(max(int(slice_ * 1000), 1))
            current = self._call(self.operations.WaitOperation, request, slice_ + self.timeout).operation
            if current.done:
                return _succeeded(current)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"operation {name} not done after {timeout}s")

    # --- events ----------------------------------------------------------------

    def watch_events(self, *, tenant_id: str = "", after: int | None = None) -> Iterator[event_service_pb2.TenantEvent]:
        """See AsyncTenantryClient.watch_events."""
        last = after
        backoff = WATCH_BACKOFF
        while True:
            request = event_service_pb2.WatchTenantEventsRequest(tenant_id=tenant_id)
            if last is not None:
                request.after_sequence = last
            call = self.events.WatchTenantEvents(request, wait_for_ready=True)
            try:
                for response in call:
                    event = response.event
                    if last is not None and event.sequence <= last:
                        continue
                    last = event.sequence
                    backoff = WATCH_BACKOFF
                    yield event
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                if code not in RESUMABLE:
                    raise error_from_rpc(exc) from None
            finally:
                call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
            time.sleep(backoff)
            backoff = min(backoff * 2, WATCH_MAX_BACKOFF)

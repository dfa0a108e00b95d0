"""The authentication interceptor: every call to one of our services carries a
bearer token that verifies and grants the method's permission, or is refused
before anything else runs. Health and reflection are not ours and pass.

It must run outside (before) the tenant gate: a tenant-bound token naming
another tenant is refused before that tenant is looked up. It answers refusals
itself (UNAUTHENTICATED / PERMISSION_DENIED with ErrorInfo), so it does not
depend on where the error-mapping interceptor sits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import grpc

from tenant_api.authentication import Principal, TokenVerifier, bearer_token, current_principal
from tenant_api.authorization import authorize, check_tenant, is_public
from tenant_api.errors import ApiError
from tenant_api.headers import AUTHORIZATION_HEADER, TENANT_ID_HEADER, TENANT_SLUG_HEADER, metadata_value
from tenant_api.interceptors.handlers import ServerInterceptor, replace_stream, replace_unary
from tenant_api.tenant_gate import is_tenant_scoped

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tenant_api.interceptors.handlers import Behavior, Continuation, Handler, StreamBehavior


class AuthenticationInterceptor(ServerInterceptor):
    """Verifies the caller, checks the method's permission (and, for
    tenant-scoped services, a tenant-bound token's tenant), and exposes the
    Principal to servicers through `current_principal` for the call."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def intercept_service(  # type: ignore[override]  # grpc allows None: "no such method"
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_public(method):
            return handler
        verifier = self._verifier
        tenant_scoped = is_tenant_scoped(method)

        async def admit(context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
            metadata = context.invocation_metadata()
            try:
                principal = await verifier.verify(bearer_token(metadata_value(metadata, AUTHORIZATION_HEADER)))
                authorize(principal, method)
                if tenant_scoped:
                    check_tenant(
                        principal,
                        metadata_value(metadata, TENANT_ID_HEADER),
                        metadata_value(metadata, TENANT_SLUG_HEADER),
                    )
            except ApiError as exc:
                status = exc.to_status()
                await context.abort(status.code, status.details, status.trailing_metadata)
            return principal

        if handler.unary_stream is not None:
            inner_stream = cast("StreamBehavior", handler.unary_stream)

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                token = current_principal.set(await admit(context))
                try:
                    async for response in inner_stream(request, context):
                        yield response
                finally:
                    current_principal.reset(token)

            return replace_stream(handler, stream)
        if handler.unary_unary is None:
            return None  # fail closed: no client-streaming method is guarded here
        inner = cast("Behavior", handler.unary_unary)

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = current_principal.set(await admit(context))
            try:
                return await inner(request, context)
            finally:
                current_principal.reset(token)

        return replace_unary(handler, behavior)

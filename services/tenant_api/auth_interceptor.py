"""The authentication interceptor: every call to one of our services carries a
bearer token that verifies and grants the method's permission, or is refused
before anything else runs. Health and reflection are not ours and pass.

It must run outside (before) the tenant gate: a tenant-bound token naming
another tenant is refused before that tenant is looked up. It answers refusals
itself (UNAUTHENTICATED / PERMISSION_DENIED with ErrorInfo), so it does not
depend on where the error-mapping interceptor sits.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

from tenant_api.authentication import TokenVerifier, bearer_token, current_principal
from tenant_api.authorization import authorize, check_tenant, is_public
from tenant_api.errors import ApiError
from tenant_api.tenant_gate import TENANT_ID_HEADER, TENANT_SLUG_HEADER, is_tenant_scoped, metadata_value

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

AUTHORIZATION_HEADER = "authorization"


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
        if handler.unary_unary is None:
            # Fail closed: a streaming method of ours is not served until this
            # interceptor learns to guard streams.
            log.error("refusing unguarded streaming method %s", method)
            return None
        inner = cast("Behavior", handler.unary_unary)
        verifier = self._verifier
        tenant_scoped = is_tenant_scoped(method)

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
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
            token = current_principal.set(principal)
            try:
                return await inner(request, context)
            finally:
                current_principal.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

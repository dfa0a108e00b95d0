"""Server interceptors: domain errors to statuses in one place, and the tenant gate."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from tenant_api.errors import ApiError, unavailable
from tenant_api.tenant_gate import TenantGate, current_tenant, is_tenant_scoped
from tenantry.pg_errors import UNAVAILABLE_SQLSTATE_PREFIXES

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

# Lost a race with another transaction: safe for the client to retry.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


class _MalformedRequest:
    """Stands in for a request whose bytes do not parse."""


MALFORMED = _MalformedRequest()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return MALFORMED

    return deserialize


def replace_unary(handler: Handler, behavior: Behavior, *, tolerant: bool = False) -> Handler:
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=_tolerant(handler.request_deserializer) if tolerant else handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _database_error(exc: DBAPIError) -> ApiError | None:
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if exc.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATE_PREFIXES):
        return unavailable("DATABASE_UNAVAILABLE", "the database is unavailable, retry later")
    if sqlstate in _CONFLICT_SQLSTATES:
        return ApiError(grpc.StatusCode.ABORTED, "CONCURRENT_UPDATE", "conflicting concurrent change, retry")
    return None


class ErrorMappingInterceptor(ServerInterceptor):
    """Outermost: every failure of a unary call leaves as a deliberate status
    with ErrorInfo. Anything unmapped is a bug: logged and sent as INTERNAL."""

    async def intercept_service(  # type: ignore[override]  # grpc allows None: "no such method"
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = cast("Behavior", handler.unary_unary)
        method = handler_call_details.method

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                if request is MALFORMED:
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", "request does not parse")
                return await inner(request, context)
            except grpc.aio.AbortError:
                raise
            except ApiError as exc:
                error = exc
            except DBAPIError as exc:
                mapped = _database_error(exc)
                if mapped is None:
                    log.exception("unmapped database error in %s", method)
                    mapped = ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")
                error = mapped
            except (OSError, TimeoutError, PoolTimeoutError) as exc:
                log.warning("dependency unavailable in %s: %s", method, exc)
                error = unavailable("DATABASE_UNAVAILABLE", "the database is unavailable, retry later")
            except Exception:
                log.exception("bug: unhandled exception in %s", method)
                error = ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")
            status = error.to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)

        return replace_unary(handler, behavior, tolerant=True)


class TenantGateInterceptor(ServerInterceptor):
    """Admits a call to a tenant-scoped service only for an ACTIVE tenant, and
    makes that tenant available to the servicer through `current_tenant`."""

    def __init__(self, gate: TenantGate) -> None:
        self._gate = gate

    async def intercept_service(  # type: ignore[override]  # grpc allows None: "no such method"
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not is_tenant_scoped(handler_call_details.method):
            return handler
        if handler.unary_unary is None:
            # Fail closed: a streaming tenant-scoped method is not served
            # (UNIMPLEMENTED) until the gate learns to guard streams.
            log.error("refusing unguarded streaming tenant-scoped method %s", handler_call_details.method)
            return None
        inner = cast("Behavior", handler.unary_unary)
        gate = self._gate

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with gate.admitted(context.invocation_metadata()) as scope:
                token = current_tenant.set(scope)
                try:
                    return await inner(request, context)
                except DBAPIError as exc:
                    explained = await gate.explain_failure(scope, exc)
                    if explained is None:
                        raise
                    raise explained from exc
                finally:
                    current_tenant.reset(token)

        return replace_unary(handler, behavior)

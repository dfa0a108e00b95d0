"""Domain errors to statuses, in one place."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import grpc
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from tenant_api.errors import ApiError, unavailable
from tenant_api.interceptors.handlers import MALFORMED, ServerInterceptor, replace_stream, replace_unary
from tenantry.pg_errors import UNAVAILABLE_SQLSTATE_PREFIXES

if TYPE_CHECKING:
    from tenant_api.interceptors.handlers import Behavior, Continuation, Handler, StreamBehavior

log = logging.getLogger(__name__)

# Lost a race with another transaction: safe for the client to retry.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


def _database_error(exc: DBAPIError) -> ApiError | None:
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if exc.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATE_PREFIXES):
        return unavailable("DATABASE_UNAVAILABLE", "the database is unavailable, retry later")
    if sqlstate in _CONFLICT_SQLSTATES:
        return ApiError(grpc.StatusCode.ABORTED, "CONCURRENT_UPDATE", "conflicting concurrent change, retry")
    return None


def _api_error(exc: Exception, method: str) -> ApiError:
    """The deliberate status for `exc`; INTERNAL (and a log line) for a bug."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DBAPIError):
        mapped = _database_error(exc)
        if mapped is None:
            log.exception("unmapped database error in %s", method)
            mapped = ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")
        return mapped
    if isinstance(exc, OSError | TimeoutError | PoolTimeoutError):
        log.warning("dependency unavailable in %s: %s", method, exc)
        return unavailable("DATABASE_UNAVAILABLE", "the database is unavailable, retry later")
    log.exception("bug: unhandled exception in %s", method)
    return ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")


def _malformed() -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", "request does not parse")


class ErrorMappingInterceptor(ServerInterceptor):
    """Every failure of a call leaves as a deliberate status with ErrorInfo,
    and a request that does not parse as INVALID_ARGUMENT. Anything unmapped is
    a bug: logged and sent as INTERNAL."""

    async def intercept_service(  # type: ignore[override]  # grpc allows None: "no such method"
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_stream is not None:
            return replace_stream(
                handler, _mapped_stream(cast("StreamBehavior", handler.unary_stream), method), tolerant=True
            )
        if handler.unary_unary is None:
            return handler
        inner = cast("Behavior", handler.unary_unary)

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                if request is MALFORMED:
                    raise _malformed()
                return await inner(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure gets its deliberate status
                status = _api_error(exc, method).to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)

        return replace_unary(handler, behavior, tolerant=True)


def _mapped_stream(inner: StreamBehavior, method: str) -> StreamBehavior:
    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            if request is MALFORMED:
                raise _malformed()
            async for response in inner(request, context):
                yield response
            return
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure gets its deliberate status
            status = _api_error(exc, method).to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)

    return behavior

"""Domain errors to statuses, in one place."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import grpc
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from tenant_api.errors import ApiError, unavailable
from tenant_api.interceptors.handlers import MALFORMED, ServerInterceptor, replace_unary
from tenantry.pg_errors import UNAVAILABLE_SQLSTATE_PREFIXES

if TYPE_CHECKING:
    from tenant_api.interceptors.handlers import Behavior, Continuation, Handler

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


class ErrorMappingInterceptor(ServerInterceptor):
    """Every failure of a unary call leaves as a deliberate status with
    ErrorInfo, and a request that does not parse as INVALID_ARGUMENT. Anything
    unmapped is a bug: logged and sent as INTERNAL."""

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

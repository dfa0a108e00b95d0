"""One log line and one metric sample per RPC, with the status it ended with.

This interceptor also holds the server's per-method handler table. grpc asks
the interceptors for a handler on every call, but a method's handler (with
every inner interceptor's wrapping baked in) never changes once the server
runs: it is built on the method's first call and reused. The table's keys are
the methods the server registers, fixed when it is made: a call to any other
path is answered UNIMPLEMENTED here, before the inner interceptors, and leaves
nothing behind. Nothing here grows per request (a security review found 40,000
calls to distinct unknown paths growing the process by 400 MiB when it did).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from contextvars import Token
from typing import TYPE_CHECKING, Any, Final, cast

import grpc
from prometheus_client import Counter, Histogram

from tenant_api.headers import REQUEST_ID_HEADER, TENANT_ID_HEADER, metadata_value
from tenant_api.interceptors.handlers import ServerInterceptor, replace_stream, replace_unary
from tenantry.observability import log_context

if TYPE_CHECKING:
    from tenant_api.interceptors.handlers import Behavior, Continuation, Handler, StreamBehavior

log = logging.getLogger("tenant_api.rpc")

# Header values are logged, not trusted: bounded like the tenant id.
MAX_LOGGED_HEADER_CHARS = 64

# Calls without an x-request-id get one unique to this process and call:
# a random process prefix and a counter (uuid4 per call costs a syscall).
_PROCESS_PREFIX = os.urandom(6).hex()
_call_numbers = itertools.count(1)

RPC_REQUESTS = Counter("tenantry_rpc_requests_total", "RPCs handled, by method and status code", ["method", "code"])
RPC_LATENCY = Histogram(
    "tenantry_rpc_duration_seconds",
    "RPC latency, by method and status code",
    ["method", "code"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class _NotBuilt:
    """A registered method whose handler is built on its first call."""


_NOT_BUILT: Final = _NotBuilt()


class _MethodMetrics:
    """One method's metric children, by status code. `labels()` validates and
    locks on every call, so each child is looked up once; there are at most as
    many as there are status codes, whatever the calls send."""

    __slots__ = ("_children", "_method")

    def __init__(self, method: str) -> None:
        self._method = method
        self._children: dict[grpc.StatusCode, tuple[Counter, Histogram]] = {}

    def observe(self, code: grpc.StatusCode, elapsed: float) -> None:
        children = self._children.get(code)
        if children is None:
            children = self._children[code] = (
                RPC_REQUESTS.labels(self._method, code.name),
                RPC_LATENCY.labels(self._method, code.name),
            )
        requests, latency = children
        requests.inc()
        latency.observe(elapsed)


class AccessLogInterceptor(ServerInterceptor):
    """Sees the final status of every call (unary or server-streaming) to a registered method."""

    def __init__(self, methods: Iterable[str]) -> None:
        """`methods`: the gRPC paths (`/package.Service/Method`) the server
        registers; a call to any other path is UNIMPLEMENTED."""
        self._handlers: dict[str, Handler | _NotBuilt | None] = dict.fromkeys(methods, _NOT_BUILT)

    async def intercept_service(  # type: ignore[override]  # grpc allows None: "no such method"
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        # Unknown: no entry, and none is made (a missing key is never stored).
        handler = self._handlers.get(method)
        if isinstance(handler, _NotBuilt):
            handler = self._handlers[method] = self._wrap(await continuation(handler_call_details), method)
        return handler

    def _wrap(self, handler: Handler | None, method: str) -> Handler | None:
        if handler is None:
            return handler
        metrics = _MethodMetrics(method)
        if handler.unary_stream is not None:
            inner_stream = cast("StreamBehavior", handler.unary_stream)

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                token, started = _begin(method, context)
                code = grpc.StatusCode.CANCELLED  # the caller went away mid-stream
                try:
                    async for response in inner_stream(request, context):
                        yield response
                    code = grpc.StatusCode.OK
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    _end(metrics, code, started, token)

            return replace_stream(handler, stream)
        if handler.unary_unary is None:
            return handler
        inner = cast("Behavior", handler.unary_unary)

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token, started = _begin(method, context)
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await inner(request, context)
                code = grpc.StatusCode.OK
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                _end(metrics, code, started, token)

        return replace_unary(handler, behavior)


def _begin(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[Token[dict[str, str]], float]:
    """The call's log fields in context, and its start time."""
    metadata = context.invocation_metadata()
    request_id = metadata_value(metadata, REQUEST_ID_HEADER)
    fields = {
        "rpc_method": method,
        "request_id": request_id[:MAX_LOGGED_HEADER_CHARS]
        if request_id
        else f"{_PROCESS_PREFIX}-{next(_call_numbers):x}",
    }
    tenant_id = metadata_value(metadata, TENANT_ID_HEADER)
    if tenant_id:
        fields["tenant_id"] = tenant_id[:MAX_LOGGED_HEADER_CHARS]
    return log_context.set(fields), time.perf_counter()


def _end(metrics: _MethodMetrics, code: grpc.StatusCode, started: float, token: Token[dict[str, str]]) -> None:
    elapsed = time.perf_counter() - started
    metrics.observe(code, elapsed)
    log.info("rpc", extra={"code": code.name, "duration_ms": round(elapsed * 1000, 2)})
    log_context.reset(token)

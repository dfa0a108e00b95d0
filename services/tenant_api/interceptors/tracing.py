"""A SERVER span per RPC, in the chain only while the process traces
(`tenantry.tracing`): a process without an exporter does not pay for it.

Our own interceptor rather than opentelemetry-instrumentation-grpc: that one
wraps the servicer context and every handler on each call and brings the
instrumentation framework; this one builds each method's wrapper once (like
the access log) and does one span per call. It continues an incoming W3C
`traceparent` (the propagators of OTEL_PROPAGATORS), names the span
`package.Service/Method`, and records the status code (server errors, as
OpenTelemetry's gRPC conventions define them, mark the span as an error).
Health checks get no span.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc_health.v1 import health
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from tenant_api.interceptors.handlers import ServerInterceptor, replace_stream, replace_unary

if TYPE_CHECKING:
    from tenant_api.interceptors.handlers import Behavior, Continuation, Handler, StreamBehavior

# The codes OpenTelemetry's RPC conventions count as server errors.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# Probes every few seconds would bury the traces that matter.
UNTRACED_SERVICES = frozenset({health.SERVICE_NAME})
_PROPAGATION_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})


def _parent(context: grpc.aio.ServicerContext[Any, Any]) -> Context | None:
    carrier = {key: value for key, value in context.invocation_metadata() or () if key in _PROPAGATION_HEADERS}
    return propagate.extract(carrier) if carrier else None


def _finish(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))


class RpcTracingInterceptor(ServerInterceptor):
    """Outermost in the chain, so every other interceptor's work (and the
    access log's line) happens inside the span."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        # Only methods some inner interceptor serves get an entry (the access
        # log answers unknown paths with None, which is never stored).
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(  # type: ignore[override]  # grpc allows None: "no such method"
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            inner = await continuation(handler_call_details)
            if inner is None:
                return None
            handler = self._handlers[method] = self._wrap(inner, method)
        return handler

    def _wrap(self, handler: Handler, method: str) -> Handler:
        tracer = self._tracer
        name = method.lstrip("/")
        service, _, method_name = name.partition("/")
        if service in UNTRACED_SERVICES:
            return handler
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method_name}

        def server_span(context: grpc.aio.ServicerContext[Any, Any]) -> AbstractContextManager[trace.Span]:
            # The status is set from the gRPC code (_finish), not from exceptions.
            return tracer.start_as_current_span(
                name,
                context=_parent(context),
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )

        if handler.unary_stream is not None:
            inner_stream = cast("StreamBehavior", handler.unary_stream)

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                with server_span(context) as span:
                    code = grpc.StatusCode.CANCELLED  # the caller went away mid-stream
                    try:
                        async for response in inner_stream(request, context):
                            yield response
                        code = grpc.StatusCode.OK
                    except grpc.aio.AbortError:
                        code = context.code() or grpc.StatusCode.UNKNOWN
                        raise
                    finally:
                        _finish(span, code)

            return replace_stream(handler, stream)
        if handler.unary_unary is None:
            return handler
        inner = cast("Behavior", handler.unary_unary)

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with server_span(context) as span:
                code = grpc.StatusCode.UNKNOWN
                try:
                    response = await inner(request, context)
                    code = grpc.StatusCode.OK
                    return response
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    _finish(span, code)

        return replace_unary(handler, behavior)

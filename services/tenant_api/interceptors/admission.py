"""Admission: at most a fixed number of calls in flight per process; the rest
are refused at once with RESOURCE_EXHAUSTED `TOO_MANY_REQUESTS` (ErrorInfo).

grpc.aio has its own cap (`grpc.aio.server(maximum_concurrent_rpcs=...)`), but
its refusal is a bare RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!"
without ErrorInfo, and it counts every call, health checks included: a storm
of API calls would fail the orchestrator's health probe and get a healthy
process restarted. So the count is ours: health (not our service, and cheap)
is never counted nor refused; everything else, our services and reflection,
is. A server-streaming call (WatchTenantEvents) or a reflection stream holds
its place until it ends.

The counter is one integer: nothing per client or per method grows. It sits
right inside the access log (which still logs and counts the refusals) and
outside everything that costs something: a refused call never verifies a
token nor touches the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, cast

import grpc

from tenant_api.errors import resource_exhausted
from tenant_api.interceptors.handlers import ServerInterceptor, replace_stream, replace_unary

if TYPE_CHECKING:
    from collections.abc import Callable

    from tenant_api.interceptors.handlers import Behavior, Continuation, Handler, StreamBehavior

    BidiBehavior = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


class AdmissionInterceptor(ServerInterceptor):
    """Refuses a call when `max_calls` calls are already in flight."""

    def __init__(self, max_calls: int, exempt_services: Iterable[str]) -> None:
        """`exempt_services`: full service names (e.g. grpc.health.v1.Health)
        whose calls are neither counted nor refused."""
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        self.max_calls = max_calls
        self._in_flight = 0
        self._exempt = tuple(f"/{name}/" for name in exempt_services)

    @property
    def in_flight(self) -> int:
        """Calls admitted and not finished yet."""
        return self._in_flight

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self._in_flight >= self.max_calls:
            status = resource_exhausted(
                "TOO_MANY_REQUESTS",
                f"the server is handling its maximum of {self.max_calls} calls, retry later",
                limit=str(self.max_calls),
            ).to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        self._in_flight += 1

    def _release(self) -> None:
        self._in_flight -= 1

    async def intercept_service(  # type: ignore[override]  # grpc allows None: "no such method"
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        if handler.unary_unary is not None:
            return replace_unary(handler, self._unary(cast("Behavior", handler.unary_unary)))
        if handler.unary_stream is not None:
            return replace_stream(handler, self._stream(cast("StreamBehavior", handler.unary_stream)))
        if handler.stream_stream is not None:  # reflection
            return grpc.stream_stream_rpc_method_handler(
                self._bidi(cast("BidiBehavior", handler.stream_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return None  # fail closed: our contract has no client-streaming method

    def _unary(self, inner: Behavior) -> Behavior:
        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self._admit(context)
            try:
                return await inner(request, context)
            finally:
                self._release()

        return behavior

    def _stream(self, inner: StreamBehavior) -> StreamBehavior:
        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await self._admit(context)
            try:
                async for response in inner(request, context):
                    yield response
            finally:
                self._release()

        return behavior

    def _bidi(self, inner: BidiBehavior) -> BidiBehavior:
        async def behavior(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await self._admit(context)
            try:
                async for response in inner(requests, context):
                    yield response
            finally:
                self._release()

        return behavior

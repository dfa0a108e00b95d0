"""Plumbing shared by the interceptors: the handler types, and replacing a
unary or server-streaming handler's behavior while keeping its (de)serializers.
Our contract has no client-streaming methods; an interceptor that guards calls
must handle both kinds it wraps, or refuse the other (fail closed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
    StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor


class _MalformedRequest:
    """Stands in for a request whose bytes do not parse."""


# What a tolerant handler's behavior receives for a request that does not
# parse; the error-mapping interceptor answers it INVALID_ARGUMENT.
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
    """`handler` with `behavior` in place of its unary-unary behavior. With
    `tolerant`, a request that does not parse reaches `behavior` as MALFORMED
    instead of failing inside grpc."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=_tolerant(handler.request_deserializer) if tolerant else handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def replace_stream(handler: Handler, behavior: StreamBehavior, *, tolerant: bool = False) -> Handler:
    """`replace_unary` for a unary-stream (server-streaming) handler."""
    return grpc.unary_stream_rpc_method_handler(
        behavior,
        request_deserializer=_tolerant(handler.request_deserializer) if tolerant else handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )

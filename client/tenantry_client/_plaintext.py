"""Plaintext to a non-loopback target (TLS ends in a proxy or mesh sidecar in
front of the API): gRPC refuses call credentials on such a channel, so the
token is added as `authorization` metadata by interceptors instead, once per
call (a retried attempt carries the same token)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from tenantry_client._channel import Tokens

if TYPE_CHECKING:
    AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    SyncUnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    SyncUnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
else:  # generic only in grpc-stubs
    AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor
    SyncUnaryUnary = grpc.UnaryUnaryClientInterceptor
    SyncUnaryStream = grpc.UnaryStreamClientInterceptor

AUTHORIZATION = "authorization"


def _with_token(metadata: Sequence[tuple[str, str | bytes]] | None, value: str) -> list[tuple[str, str | bytes]]:
    return [*(pair for pair in metadata or () if pair[0] != AUTHORIZATION), (AUTHORIZATION, f"Bearer {value}")]


class _AioToken:
    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    async def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        # A token callable may block (it may fetch): not on the event loop.
        value = await asyncio.to_thread(self._tokens.current)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*_with_token(list(details.metadata or ()), value)),
            details.credentials,
            details.wait_for_ready,
        )


# grpc.aio files an interceptor under the first call kind it implements only: one object per kind.
class AioUnaryToken(_AioToken, AioUnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(await self._details(details), request)


class AioStreamToken(_AioToken, AioUnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(await self._details(details), request)


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


class SyncToken(SyncUnaryUnary, SyncUnaryStream):
    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    def _details(self, details: Any) -> Any:
        # grpc reads the fields by name, as the namedtuple in its own examples.
        return _Details(
            details.method,
            details.timeout,
            _with_token(details.metadata, self._tokens.current()),
            details.credentials,
            details.wait_for_ready,
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

"""The access log interceptor's handler table is bounded by the registered
methods: calls to unknown paths are UNIMPLEMENTED and leave nothing behind."""

from __future__ import annotations

import asyncio
import resource

import grpc

from tests.stack import Stack

UNKNOWN_PATHS = 20_000
WARM_UP_PATHS = 2_000
IN_FLIGHT = 200
# The client shares this process, and grpc's client side keeps something per
# distinct path for a connection's life (~2 KiB per long path, measured with no
# server interceptor at all): a fresh connection, not shared with the other
# channels to the server (local subchannel pool), for every so many calls, so
# that the growth measured is the server's.
CALLS_PER_CHANNEL = 2_000
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# Long paths, as an attacker's would be (within grpc's 8 KiB metadata limit):
# a table keeping each one grows by ~40 MiB over this test.
PATH_PADDING_CHARS = 2_000
MAX_GROWTH_BYTES = 20 * 1024 * 1024


def _identity(data: bytes) -> bytes:
    return data


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _unknown_path(i: int) -> str:
    # Unknown services, and unknown methods of a known (tenant-scoped) service.
    padding = "x" * PATH_PADDING_CHARS
    if i % 2:
        return f"/tenantry.v1.NoSuchService{i}{padding}/Method"
    return f"/tenantry.v1.ProjectService/NoSuchMethod{i}{padding}"


async def _call_unknown_paths(stack: Stack, numbers: range) -> list[grpc.StatusCode]:
    codes: list[grpc.StatusCode] = []

    async def call(channel: grpc.aio.Channel, i: int) -> None:
        path = _unknown_path(i)
        multicallable = channel.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)
        try:
            await multicallable(b"", timeout=30)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
        else:
            codes.append(grpc.StatusCode.OK)

    for first in range(numbers.start, numbers.stop, CALLS_PER_CHANNEL):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.api.port}", options=OWN_CONNECTION) as channel:
            last = min(first + CALLS_PER_CHANNEL, numbers.stop)
            for start in range(first, last, IN_FLIGHT):
                await asyncio.gather(*(call(channel, i) for i in range(start, min(start + IN_FLIGHT, last))))
    return codes


async def test_unknown_method_paths_are_unimplemented_and_do_not_grow_the_server(stack: Stack) -> None:
    """The server runs in this process, so its growth is this process's."""
    warm_up = await _call_unknown_paths(stack, range(-WARM_UP_PATHS, 0))
    assert set(warm_up) == {grpc.StatusCode.UNIMPLEMENTED}
    before = _rss_bytes()
    codes = await _call_unknown_paths(stack, range(UNKNOWN_PATHS))
    growth = _rss_bytes() - before
    assert len(codes) == UNKNOWN_PATHS
    assert set(codes) == {grpc.StatusCode.UNIMPLEMENTED}
    assert growth < MAX_GROWTH_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB over {UNKNOWN_PATHS} unknown paths"

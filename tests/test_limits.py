"""The API bounds its own memory and concurrency whatever clients send
(design.md, "Least privilege and limits"): message sizes from the contract,
a cap on calls in flight, a smaller cap on open WaitOperation calls, health
checks never refused, WaitOperation at most 60 s per call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from google.protobuf import descriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenant_api import pagination
from tenant_api.events import MAX_WATCHES
from tenant_api.operations import MAX_CONCURRENT_WAIT_READS, MAX_WAITS, Operations
from tenant_api.server import MAX_CONCURRENT_RPCS, MAX_RECEIVE_MESSAGE_BYTES, MAX_SEND_MESSAGE_BYTES
from tenant_api.servicers import MAX_WAIT, OperationServicer
from tenantry.db.models import Operation
from tenantry.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    operation_service_pb2,
    tenant_service_pb2,
)
from tests.stack import (
    Stack,
    api_channel,
    error_info,
    expect_error,
    expect_invalid_field,
    registration,
    rpc_error,
    stack_without_temporal,
    stubs_for,
)

# --- message sizes ------------------------------------------------------------------

# The longest value each string field may hold under the contract (design.md);
# a field not named here gets UNNAMED_STRING_CHARS, generously.
STRING_MAX_CHARS = {
    "id": 36,
    "tenant_id": 36,
    "request_id": 36,
    "slug": 40,
    "display_name": 100,
    "admin_display_name": 100,
    "admin_email": 254,
    "state_message": 1024,
    "error_message": 1024,
    "schema_name": 34,
    "name": 211,  # operations/{workflow_id <= 200}
    "page_token": 1024,
    "next_page_token": 1024,
}
UNNAMED_STRING_CHARS = 256
# Free text may be any Unicode: four bytes of UTF-8 per character, the worst a
# character-counted limit allows. Everything else is ASCII by its pattern.
FREE_TEXT = frozenset({"display_name", "admin_display_name", "state_message", "error_message"})
WIDE = "\U0001d518"
MAX_LABELS = 64
LABEL_KEY_CHARS = LABEL_VALUE_CHARS = 63


def worst_case(message: Message, depth: int = 0) -> Message:
    """`message` with every field at its largest valid size, from the compiled
    contract: a field added later is counted without anyone updating this test."""
    for field in message.DESCRIPTOR.fields:
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                entries = getattr(message, field.name)
                for i in range(MAX_LABELS):
                    key = f"k{i:02d}".ljust(LABEL_KEY_CHARS, "x")
                    entries[key] = "v" * LABEL_VALUE_CHARS
            continue  # repeated messages (pages) are filled by the caller
        if field.containing_oneof is not None and message.WhichOneof(field.containing_oneof.name) is not None:
            continue
        if field.type == descriptor.FieldDescriptor.TYPE_STRING:
            char = WIDE if field.name in FREE_TEXT else "x"
            setattr(message, field.name, char * STRING_MAX_CHARS.get(field.name, UNNAMED_STRING_CHARS))
        elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE and depth < 3:
            worst_case(getattr(message, field.name), depth + 1)
        elif field.type in (descriptor.FieldDescriptor.TYPE_INT64, descriptor.FieldDescriptor.TYPE_INT32):
            setattr(message, field.name, -1)  # ten bytes on the wire, the most a varint takes
        elif field.type == descriptor.FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            setattr(message, field.name, max(v.number for v in field.enum_type.values))
        elif field.type == descriptor.FieldDescriptor.TYPE_BOOL:
            setattr(message, field.name, True)
    return message


def worst_page(response: Message, repeated_field: str) -> Message:
    worst_case(response)
    items = getattr(response, repeated_field)
    one = worst_case(items.add())
    for _ in range(pagination.MAX_PAGE_SIZE - 1):
        items.add().CopyFrom(one)
    return response


def test_largest_valid_requests_fit_the_receive_limit_with_room() -> None:
    requests = [
        worst_case(tenant_service_pb2.RegisterTenantRequest()),
        worst_case(tenant_service_pb2.ListTenantsRequest()),
        worst_case(operation_service_pb2.ListOperationsRequest()),
        worst_case(operation_service_pb2.WaitOperationRequest()),
        worst_case(event_service_pb2.ListTenantEventsRequest()),
    ]
    # A full tenant (UpdateTenant carries one) with 64 labels is the largest payload of the contract.
    requests.append(worst_case(tenant_service_pb2.GetTenantResponse()))
    largest = max(request.ByteSize() for request in requests)
    assert largest * 4 <= MAX_RECEIVE_MESSAGE_BYTES, largest


def test_largest_pages_fit_the_send_limit_with_room() -> None:
    pages = [
        worst_page(tenant_service_pb2.ListTenantsResponse(), "tenants"),
        worst_page(operation_service_pb2.ListOperationsResponse(), "operations"),
        worst_page(event_service_pb2.ListTenantEventsResponse(), "events"),
    ]
    largest = max(page.ByteSize() for page in pages)
    assert largest * 2 <= MAX_SEND_MESSAGE_BYTES, largest


async def test_request_over_the_receive_limit_is_refused_before_it_is_read(stack: Stack) -> None:
    # Just under the limit: parsed, then refused by validation like any bad slug.
    under = tenant_service_pb2.GetTenantRequest(slug="a" * (MAX_RECEIVE_MESSAGE_BYTES - 64))
    await expect_invalid_field(stack.stubs.tenants.GetTenant(under, timeout=10), "slug")
    # Over it: grpc refuses the message itself (RESOURCE_EXHAUSTED, its own
    # status: no ErrorInfo can be attached there), never INTERNAL/UNKNOWN.
    over = tenant_service_pb2.GetTenantRequest(slug="a" * (MAX_RECEIVE_MESSAGE_BYTES + 1))
    error = await rpc_error(stack.stubs.tenants.GetTenant(over, timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()


def test_caps_leave_room_for_short_calls() -> None:
    # Waits and watches at their caps still leave most places to short calls.
    assert MAX_WAITS + MAX_WATCHES <= MAX_CONCURRENT_RPCS // 2


class _AskedFor(Exception):
    pass


class _RecordingOperations(Operations):
    """Records how long the servicer asks to wait, then stops the call."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def wait(self, name: str, timeout_seconds: float) -> Operation:
        self.asked.append(timeout_seconds)
        raise _AskedFor


class _NoDeadline:
    def time_remaining(self) -> float | None:
        return None


@pytest.mark.parametrize(("requested", "expected"), [(1, 1.0), (59, 59.0), (60, 60.0), (3600, 60.0), (2**62, 60.0)])
async def test_wait_operation_waits_at_most_60_seconds_per_call(requested: int, expected: float) -> None:
    operations = _RecordingOperations()
    request = wait_request("operations/tenant-provision-x", requested)
    context = cast("grpc.aio.ServicerContext[Any, Any]", _NoDeadline())
    with pytest.raises(_AskedFor):
        await OperationServicer(operations).WaitOperation(request, context)
    assert operations.asked == [expected]
    assert MAX_WAIT.total_seconds() == 60


# --- caps on calls in flight --------------------------------------------------------


async def health_status(target: str, timeout: float = 2.0) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    return int(response.status)


async def finish_operation(engine: AsyncEngine, name: str) -> None:
    """What the worker does when an operation ends (the trigger notifies the waiters)."""
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE workflow_executions SET state = 'FAILED', end_time = now() WHERE workflow_id = :id"),
            {"id": name.removeprefix("operations/")},
        )


def wait_request(name: str, seconds: int) -> operation_service_pb2.WaitOperationRequest:
    request = operation_service_pb2.WaitOperationRequest(name=name)
    request.timeout.FromSeconds(seconds)
    return request


async def until(check: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def held_waits(
    stack: Stack, name: str, count: int
) -> AsyncIterator[list[asyncio.Task[operation_service_pb2.WaitOperationResponse]]]:
    """`count` WaitOperation calls on `name` (a PENDING operation), admitted and waiting."""

    async def wait() -> operation_service_pb2.WaitOperationResponse:
        return await stack.stubs.operations.WaitOperation(wait_request(name, 30), timeout=45)

    tasks = [asyncio.create_task(wait()) for _ in range(count)]
    try:
        await until(lambda: stack.api.operations.open_waits == count)
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_calls_beyond_the_cap_are_refused_too_many_requests_health_is_not(engine: AsyncEngine) -> None:
    async with stack_without_temporal(engine, max_concurrent_rpcs=3, max_waits=3) as small:
        operation = (await small.stubs.tenants.RegisterTenant(registration(), timeout=30)).operation
        get = operation_service_pb2.GetOperationRequest(name=operation.name)
        async with held_waits(small, operation.name, 3) as waits:
            assert small.api.admission.in_flight == 3
            error = await expect_error(
                small.stubs.operations.GetOperation(get, timeout=10),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_REQUESTS",
            )
            assert error_info(error).metadata["limit"] == "3"
            target = f"127.0.0.1:{small.api.port}"
            assert await health_status(target) == health_pb2.HealthCheckResponse.SERVING
            # Once the operation ends, the waits answer normally and free their places.
            await finish_operation(engine, operation.name)
            answers = await asyncio.wait_for(asyncio.gather(*waits), 20)
            assert all(answer.operation.done for answer in answers)
        await until(lambda: small.api.admission.in_flight == 0)
        assert (await small.stubs.operations.GetOperation(get, timeout=10)).operation.done


async def test_waits_beyond_their_cap_are_refused_too_many_waits(engine: AsyncEngine) -> None:
    async with stack_without_temporal(engine, max_waits=2) as small:
        operation = (await small.stubs.tenants.RegisterTenant(registration(), timeout=30)).operation
        async with held_waits(small, operation.name, 2):
            error = await expect_error(
                small.stubs.operations.WaitOperation(wait_request(operation.name, 5), timeout=10),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_WAITS",
            )
            assert error_info(error).metadata["limit"] == "2"
            # Other calls still pass: the cap is on waits only.
            get = operation_service_pb2.GetOperationRequest(name=operation.name)
            assert not (await small.stubs.operations.GetOperation(get, timeout=10)).operation.done
        await until(lambda: small.api.operations.open_waits == 0)
        assert (await small.stubs.operations.WaitOperation(wait_request(operation.name, 1), timeout=10)).operation


async def list_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = [reply async for reply in stub.ServerReflectionInfo(iter([request]), timeout=10)]
    return [service.name for reply in replies for service in reply.list_services_response.service]


async def test_streams_hold_their_place_until_they_end(engine: AsyncEngine) -> None:
    async with stack_without_temporal(engine, max_concurrent_rpcs=1) as small:
        events = event_service_pb2_grpc.TenantEventServiceStub(small.channel)
        watch = events.WatchTenantEvents(event_service_pb2.WatchTenantEventsRequest(), timeout=60)
        await until(lambda: small.api.admission.in_flight == 1)
        # Reflection (a bidirectional stream, not our service) counts too; health does not.
        await expect_error(list_services(small.channel), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_REQUESTS")
        assert await health_status(f"127.0.0.1:{small.api.port}") == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        await until(lambda: small.api.admission.in_flight == 0)
        assert "grpc.health.v1.Health" in await list_services(small.channel)
        assert small.api.admission.in_flight == 0


STORM_CALLS = 2_000
STORM_CHANNELS = 10


async def test_wait_storm_is_bounded_health_and_other_calls_keep_answering(engine: AsyncEngine) -> None:
    """2,000 WaitOperation calls at once against the default caps: at most
    MAX_WAITS wait, every other one is refused RESOURCE_EXHAUSTED with ErrorInfo
    at once; meanwhile health answers SERVING within 2 s, the waits' database
    reads stay within a few pooled connections, and a GetTenant succeeds."""
    async with stack_without_temporal(engine) as api:
        registered = await api.stubs.tenants.RegisterTenant(registration(), timeout=30)
        name = registered.operation.name
        target = f"127.0.0.1:{api.api.port}"
        channels = [api_channel(target) for _ in range(STORM_CHANNELS)]
        pool = engine.pool
        peak_checked_out = 0
        health_answers: list[int] = []
        storm_over = asyncio.Event()

        async def watch_health() -> None:
            nonlocal peak_checked_out
            async with grpc.aio.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while not storm_over.is_set():
                    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    health_answers.append(int(response.status))
                    peak_checked_out = max(peak_checked_out, pool.checkedout())  # type: ignore[attr-defined]
                    await asyncio.sleep(0.05)

        async def one_wait(i: int) -> Any:
            stub = stubs_for(channels[i % STORM_CHANNELS]).operations
            try:
                return await stub.WaitOperation(wait_request(name, 30), timeout=60)
            except grpc.aio.AioRpcError as error:
                return error

        try:
            health = asyncio.create_task(watch_health())
            calls = [asyncio.create_task(one_wait(i)) for i in range(STORM_CALLS)]
            # Every call but the admitted waits is answered, while those still wait.
            await until(lambda: sum(call.done() for call in calls) == STORM_CALLS - MAX_WAITS, timeout=25)
            assert api.api.operations.open_waits == MAX_WAITS
            # The pool still serves other calls.
            tenant = await api.stubs.tenants.GetTenant(
                tenant_service_pb2.GetTenantRequest(tenant_id=registered.tenant.id), timeout=5
            )
            assert tenant.tenant.id == registered.tenant.id
            await finish_operation(engine, name)
            results = await asyncio.wait_for(asyncio.gather(*calls), 25)
            storm_over.set()
            await asyncio.wait_for(health, 10)
        finally:
            storm_over.set()
            for channel in channels:
                await channel.close(None)

    answered = [r for r in results if not isinstance(r, grpc.aio.AioRpcError)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(answered) == MAX_WAITS
    assert all(r.operation.done for r in answered)
    reasons: dict[str, int] = {}
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{error.code()}: {error.details()}"
        reason = error_info(error).reason
        reasons[reason] = reasons.get(reason, 0) + 1
    assert set(reasons) <= {"TOO_MANY_REQUESTS", "TOO_MANY_WAITS"}, reasons
    assert reasons.get("TOO_MANY_WAITS", 0) > 0, reasons
    assert health_answers and set(health_answers) == {health_pb2.HealthCheckResponse.SERVING}
    # The waits' reads queue on their own semaphore, never on the shared pool.
    assert peak_checked_out <= MAX_CONCURRENT_WAIT_READS + 4 < pool.size(), peak_checked_out  # type: ignore[attr-defined]

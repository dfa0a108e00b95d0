"""The RPC surface as a whole, over real gRPC: every RPC of the contract answers
an empty or unparseable request deliberately (INVALID_ARGUMENT with ErrorInfo,
never INTERNAL, UNKNOWN or UNIMPLEMENTED); reflection and health work as documented.
The RPCs are read from the compiled contract, so a new one is covered at once."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.stack import BUG_CODES, Stack, contract_services, count_tenants, error_info, expect_error

TIMEOUT = 30.0
TENANT_SERVICE = "tenantry.v1.TenantService"
CONTRACT = contract_services()
CONTRACT_RPCS = [(service, method) for service, methods in sorted(CONTRACT.items()) for method in methods]


def _identity(data: bytes) -> bytes:
    return data


def _server_streaming(service: str, method: str) -> bool:
    return bool(descriptor_pool.Default().FindMethodByName(f"{service}.{method}").server_streaming)


async def raw_call(stack: Stack, service: str, method: str, payload: bytes, timeout: float = TIMEOUT) -> bytes:
    """Sends `payload` as the request bytes, unparsed by the client; the
    response, or a stream's first message."""
    path = f"/{service}/{method}"
    if _server_streaming(service, method):
        stream = stack.channel.unary_stream(path, request_serializer=_identity, response_deserializer=_identity)
        first: bytes = await stream(payload, timeout=timeout).read()  # type: ignore[assignment]
        return first
    call = stack.channel.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)
    response: bytes = await call(payload, timeout=timeout)
    return response


def test_the_contract_is_read_from_the_descriptors() -> None:
    """Guards the derivation: the three services are found, none without methods."""
    assert {"tenantry.v1.TenantService", "tenantry.v1.OperationService", "tenantry.v1.ProjectService"} <= set(CONTRACT)
    assert all(CONTRACT.values()), CONTRACT
    assert ("tenantry.v1.TenantService", "RegisterTenant") in CONTRACT_RPCS


# --- bytes that do not parse -------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, encoded by hand so it can carry any bytes."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


MALFORMED_PAYLOADS = [
    pytest.param(_string_field(1, b"\xff\xfe"), id="slug-bad-utf8"),
    pytest.param(_string_field(2, b"Acme \xc0\x80"), id="display_name-overlong-nul"),
    pytest.param(_string_field(3, b"ada@\xed\xa0\x80.com"), id="admin_email-surrogate"),
    pytest.param(_string_field(4, b"\x80"), id="admin_display_name-continuation"),
    pytest.param(_string_field(5, b"\xf5\x80\x80\x80"), id="request_id-out-of-range"),
    pytest.param(_string_field(1, b"acme") + _string_field(2, b"\xff"), id="second-field-bad-utf8"),
    pytest.param(b"\x0a\x05ab", id="truncated-length"),
    pytest.param(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", id="overlong-varint-tag"),
    pytest.param(b"\x0a", id="tag-without-length"),
    pytest.param(b"\x0a\xff\xff\xff\xff\x0f", id="huge-length"),
    pytest.param(b"\x00", id="field-number-zero"),
    pytest.param(b"\x0b\x0a\x01a", id="unterminated-group"),
]


@pytest.mark.parametrize("payload", MALFORMED_PAYLOADS)
async def test_unparseable_register_request_is_malformed_request(
    stack: Stack, engine: AsyncEngine, payload: bytes
) -> None:
    before = await count_tenants(engine)
    await expect_error(
        raw_call(stack, TENANT_SERVICE, "RegisterTenant", payload),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )
    assert await count_tenants(engine) == before


@pytest.mark.parametrize(("service", "method"), CONTRACT_RPCS)
async def test_unparseable_request_to_any_rpc_is_malformed_request(stack: Stack, service: str, method: str) -> None:
    # Tenant-scoped RPCs too, with no tenant metadata: the bytes are judged first.
    await expect_error(
        raw_call(stack, service, method, b"\x0a\x02\xff\xfe\x12\x01\xff"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )


async def test_unknown_fields_are_ignored_not_fatal(stack: Stack) -> None:
    # Field 99 is unknown to GetTenantRequest: forward compatible, judged on known fields.
    payload = _string_field(99, b"whatever") + _string_field(2, b"no-such-tenant-slug")
    await expect_error(
        raw_call(stack, TENANT_SERVICE, "GetTenant", payload), grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND"
    )


# --- every RPC exists and answers an empty request deliberately --------------


@pytest.mark.parametrize(("service", "method"), CONTRACT_RPCS)
async def test_every_rpc_is_implemented(stack: Stack, service: str, method: str) -> None:
    streaming = _server_streaming(service, method)
    try:
        # An empty watch is valid (from now on): it stays open with nothing to send.
        await raw_call(stack, service, method, b"", timeout=2 if streaming else TIMEOUT)
    except grpc.aio.AioRpcError as error:
        if streaming and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return
        assert error.code() not in (*BUG_CODES, grpc.StatusCode.UNIMPLEMENTED), f"{error.code()}: {error.details()}"
        info = error_info(error)
        assert info.reason, "ErrorInfo without a reason"
        assert info.reason == info.reason.upper()
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"


# --- reflection and health ---------------------------------------------------


async def test_reflection_lists_the_services(stack: Stack) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=TENANT_SERVICE),
    ]
    responses = [response async for response in stub.ServerReflectionInfo(iter(requests), timeout=TIMEOUT)]
    assert len(responses) == 2
    listed = {service.name for service in responses[0].list_services_response.service}
    assert {*CONTRACT, "grpc.health.v1.Health"} <= listed
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    services = {f"{f.package}.{s.name}": {m.name for m in s.method} for f in files for s in f.service}
    assert sorted(services[TENANT_SERVICE]) == CONTRACT[TENANT_SERVICE]


@pytest.mark.parametrize("service", ["", *sorted(CONTRACT)])
async def test_health_check_is_serving(stack: Stack, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(stack.channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_check_unknown_service_is_not_found(stack: Stack) -> None:
    stub = health_pb2_grpc.HealthStub(stack.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

"""Hostile and malformed input over real gRPC: every bad request is answered with
a deliberate status carrying ErrorInfo (and BadRequest for invalid fields), never
INTERNAL or UNKNOWN; lookups, pagination, reflection and health work as documented."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.v1 import (
    operation_pb2,
    operation_service_pb2,
    project_service_pb2,
    tenant_pb2,
    tenant_service_pb2,
)
from tests.stack import BUG_CODES, Stack, error_info, expect_error, field_violations, registration, wait_done

TIMEOUT = 30.0
TENANT_SERVICE = "tenantry.v1.TenantService"
OPERATION_SERVICE = "tenantry.v1.OperationService"
PROJECT_SERVICE = "tenantry.v1.ProjectService"
SERVICES = {
    TENANT_SERVICE: tenant_service_pb2,
    OPERATION_SERVICE: operation_service_pb2,
    PROJECT_SERVICE: project_service_pb2,
}
EXPECTED_METHODS = {
    TENANT_SERVICE: {"RegisterTenant", "GetTenant", "ListTenants", "DeleteTenant"},
    OPERATION_SERVICE: {"GetOperation", "ListOperations", "WaitOperation"},
    PROJECT_SERVICE: {"CreateProject", "GetProject", "ListProjects", "DeleteProject"},
}


async def expect_invalid_field(call: Awaitable[Any], *fields: str) -> grpc.aio.AioRpcError:
    error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert set(field_violations(error)) == set(fields), field_violations(error)
    return error


def _identity(data: bytes) -> bytes:
    return data


def raw_call(stack: Stack, service: str, method: str, payload: bytes) -> Awaitable[bytes]:
    """Sends `payload` as the request bytes, unparsed by the client."""
    call = stack.channel.unary_unary(
        f"/{service}/{method}", request_serializer=_identity, response_deserializer=_identity
    )
    result: Awaitable[bytes] = call(payload, timeout=TIMEOUT)
    return result


async def count_tenants(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM tenants"))).scalar_one())


# --- RegisterTenant: hostile fields ------------------------------------------

LONG = "x" * 10_000
HOSTILE_FIELDS: list[tuple[str, str]] = [
    ("slug", "a'; DROP TABLE tenants;--"),
    ("slug", "acme'--"),
    ("slug", "acme\x00"),
    ("slug", "\x00"),
    ("slug", "\u0430cme-corp"),  # Cyrillic a
    ("slug", "acme-c\u043erp"),  # Cyrillic o
    ("slug", "\uff41\uff43\uff4d\uff45"),  # fullwidth
    ("slug", "acme\u202e"),  # right-to-left override
    ("slug", "ac\u200bme"),  # zero width space
    ("slug", "public"),
    ("slug", "admin"),
    ("slug", "api"),
    ("slug", "www"),
    ("slug", "system"),
    ("slug", "pg-tenant"),
    ("slug", "pg"),
    ("slug", LONG),
    ("slug", ""),
    ("slug", "Acme"),
    ("slug", "acme\n"),
    ("display_name", "Acme\x00Corp"),
    ("display_name", "\x00"),
    ("display_name", "Acme\u202eproC"),
    ("display_name", "Acme\u2066evil\u2069"),
    ("display_name", "Acme\x1b[2J"),
    ("display_name", "Acme\nCorp"),
    ("display_name", LONG),
    ("display_name", ""),
    ("display_name", "   "),
    ("admin_email", "ada\x00@example.com"),
    ("admin_email", "a'; DROP TABLE users;--"),
    ("admin_email", "\uff41da@example.com"),
    ("admin_email", "ad\u0430@example.com"),
    ("admin_email", "ada@example.com\u202e"),
    ("admin_email", LONG + "@example.com"),
    ("admin_email", ""),
    ("admin_email", "ada@example.com\n"),
    ("admin_display_name", "Ada\x00"),
    ("admin_display_name", "Ada\u202e"),
    ("admin_display_name", LONG),
    ("admin_display_name", ""),
    ("request_id", "not-a-uuid"),
    ("request_id", "\x00"),
    ("request_id", str(uuid.UUID(int=7)) + "\x00"),
    ("request_id", "'; DROP TABLE workflow_executions;--"),
    ("request_id", "{" + str(uuid.UUID(int=7)) + "}"),
    ("request_id", LONG),
    ("request_id", "\uff10" * 32),
]


def _valid_fields() -> dict[str, str]:
    slug = f"h-{uuid.uuid4().hex[:12]}"
    return {
        "slug": slug,
        "display_name": "Hostile Test",
        "admin_email": f"admin@{slug}.example.com",
        "admin_display_name": "Ada Admin",
    }


@pytest.mark.parametrize(("field", "value"), HOSTILE_FIELDS, ids=lambda v: repr(v)[:40])
async def test_hostile_registration_field_is_invalid_argument(
    stack: Stack, engine: AsyncEngine, field: str, value: str
) -> None:
    before = await count_tenants(engine)
    request = tenant_service_pb2.RegisterTenantRequest(**{**_valid_fields(), field: value})
    error = await expect_invalid_field(stack.stubs.tenants.RegisterTenant(request, timeout=TIMEOUT), field)
    assert field in error_info(error).metadata["fields"]
    # Neither the raw value nor anything else was stored.
    assert await count_tenants(engine) == before


async def test_all_fields_hostile_at_once_are_all_named(stack: Stack) -> None:
    request = tenant_service_pb2.RegisterTenantRequest(
        slug="\x00", display_name="\x00", admin_email="\x00", admin_display_name="\x00", request_id="\x00"
    )
    await expect_invalid_field(
        stack.stubs.tenants.RegisterTenant(request, timeout=TIMEOUT),
        "slug",
        "display_name",
        "admin_email",
        "admin_display_name",
        "request_id",
    )
    await expect_invalid_field(
        stack.stubs.tenants.RegisterTenant(tenant_service_pb2.RegisterTenantRequest(), timeout=TIMEOUT),
        "slug",
        "display_name",
        "admin_email",
        "admin_display_name",
    )


async def test_sql_and_unicode_in_display_names_are_stored_verbatim(stack: Stack, engine: AsyncEngine) -> None:
    """Text that is valid but looks dangerous is data: stored and returned unchanged."""
    display_name = "Robert'); DROP TABLE tenants;-- \uff21\uff23\uff2d\uff25 \u0441orp \u682a\u5f0f\u4f1a\u793e"
    admin_name = 'O\'Brien "Bobby" \\ %s %(x)s $1'
    response = await stack.stubs.tenants.RegisterTenant(
        registration(display_name=display_name, admin_display_name=admin_name), timeout=TIMEOUT
    )
    assert response.tenant.display_name == display_name
    fetched = await stack.stubs.tenants.GetTenant(
        tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id), timeout=TIMEOUT
    )
    assert fetched.tenant.display_name == display_name
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text(
                    "SELECT t.display_name, u.display_name FROM tenants t JOIN users u ON u.id = t.admin_user_id "
                    "WHERE t.id = :id"
                ),
                {"id": uuid.UUID(response.tenant.id)},
            )
        ).one()
    assert tuple(stored) == (display_name, admin_name)
    await wait_done(stack.stubs, response.operation.name)


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


@pytest.mark.parametrize(
    ("service", "method"),
    [(service, method) for service, methods in sorted(EXPECTED_METHODS.items()) for method in sorted(methods)],
)
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


def _service_methods(service: str) -> set[str]:
    module = SERVICES[service]
    descriptor = module.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]]
    return {method.name for method in descriptor.methods}


@pytest.mark.parametrize(
    ("service", "method"),
    [(service, method) for service, methods in sorted(EXPECTED_METHODS.items()) for method in sorted(methods)],
)
async def test_every_rpc_is_implemented(stack: Stack, service: str, method: str) -> None:
    assert _service_methods(service) == EXPECTED_METHODS[service]
    try:
        await raw_call(stack, service, method, b"")
    except grpc.aio.AioRpcError as error:
        assert error.code() not in (*BUG_CODES, grpc.StatusCode.UNIMPLEMENTED), f"{error.code()}: {error.details()}"
        info = error_info(error)
        assert info.reason, "ErrorInfo without a reason"
        assert info.reason == info.reason.upper()
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"


# --- GetTenant ---------------------------------------------------------------


async def test_get_tenant_by_id_and_slug(stack: Stack) -> None:
    response = await stack.stubs.tenants.RegisterTenant(registration(), timeout=TIMEOUT)
    by_id = await stack.stubs.tenants.GetTenant(
        tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id), timeout=TIMEOUT
    )
    by_slug = await stack.stubs.tenants.GetTenant(
        tenant_service_pb2.GetTenantRequest(slug=response.tenant.slug), timeout=TIMEOUT
    )
    assert by_id.tenant.id == by_slug.tenant.id == response.tenant.id
    assert by_slug.tenant.slug == response.tenant.slug
    # Upper-case ids are the same UUID.
    by_upper = await stack.stubs.tenants.GetTenant(
        tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id.upper()), timeout=TIMEOUT
    )
    assert by_upper.tenant.id == response.tenant.id
    await wait_done(stack.stubs, response.operation.name)


async def test_get_unknown_tenant_is_not_found(stack: Stack) -> None:
    missing = str(uuid.uuid4())
    error = await expect_error(
        stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=missing), timeout=TIMEOUT),
        grpc.StatusCode.NOT_FOUND,
        "TENANT_NOT_FOUND",
    )
    assert missing in error_info(error).metadata.values()
    await expect_error(
        stack.stubs.tenants.GetTenant(
            tenant_service_pb2.GetTenantRequest(slug=f"nobody-{uuid.uuid4().hex[:8]}"), timeout=TIMEOUT
        ),
        grpc.StatusCode.NOT_FOUND,
        "TENANT_NOT_FOUND",
    )


@pytest.mark.parametrize(
    "tenant_id", ["", "nope", "1234", "'; DROP TABLE tenants;--", "\x00", str(uuid.UUID(int=1)) + "\x00", LONG]
)
async def test_get_tenant_malformed_id_is_invalid_argument(stack: Stack, tenant_id: str) -> None:
    await expect_invalid_field(
        stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id), timeout=TIMEOUT),
        "tenant_id",
    )


@pytest.mark.parametrize("slug", ["", "\x00", "Acme", "a'; DROP TABLE tenants;--", "\u0430cme", LONG])
async def test_get_tenant_malformed_slug_is_invalid_argument(stack: Stack, slug: str) -> None:
    await expect_invalid_field(
        stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(slug=slug), timeout=TIMEOUT), "slug"
    )


async def test_get_tenant_without_reference_is_invalid_argument(stack: Stack) -> None:
    await expect_invalid_field(
        stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(), timeout=TIMEOUT), "tenant_ref"
    )


@pytest.mark.parametrize("tenant_id", ["", "nope", "\x00", LONG])
async def test_delete_tenant_malformed_id_is_invalid_argument(stack: Stack, tenant_id: str) -> None:
    await expect_invalid_field(
        stack.stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant_id), timeout=TIMEOUT),
        "tenant_id",
    )


async def test_delete_unknown_tenant_is_not_found(stack: Stack) -> None:
    await expect_error(
        stack.stubs.tenants.DeleteTenant(
            tenant_service_pb2.DeleteTenantRequest(tenant_id=str(uuid.uuid4())), timeout=TIMEOUT
        ),
        grpc.StatusCode.NOT_FOUND,
        "TENANT_NOT_FOUND",
    )


# --- ListTenants -------------------------------------------------------------


@pytest.fixture(scope="module")
async def paged_tenants(stack: Stack) -> list[tenant_pb2.Tenant]:
    """Seven tenants sharing a unique prefix, registered one after another, all ACTIVE."""
    prefix = f"pag{uuid.uuid4().hex[:8]}"
    tenants = []
    operations = []
    for i in range(7):
        response = await stack.stubs.tenants.RegisterTenant(registration(f"{prefix}-{i}"), timeout=TIMEOUT)
        tenants.append(response.tenant)
        operations.append(response.operation.name)
    for name in operations:
        assert (await wait_done(stack.stubs, name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
    return tenants


async def _all_tenant_pages(
    stack: Stack, page_size: int, show_deleted: bool = False
) -> tuple[list[list[tenant_pb2.Tenant]], list[str]]:
    pages: list[list[tenant_pb2.Tenant]] = []
    tokens: list[str] = []
    token = ""
    for _ in range(5_000):
        response = await stack.stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(page_size=page_size, page_token=token, show_deleted=show_deleted),
            timeout=TIMEOUT,
        )
        pages.append(list(response.tenants))
        token = response.next_page_token
        if not token:
            return pages, tokens
        tokens.append(token)
    raise AssertionError("pagination did not terminate")


async def test_list_tenants_pages_without_gaps_or_duplicates(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    pages, tokens = await _all_tenant_pages(stack, page_size=2)
    assert all(len(page) == 2 for page in pages[:-1])
    assert len(pages[-1]) <= 2
    listed = [tenant for page in pages for tenant in page]
    ids = [tenant.id for tenant in listed]
    assert len(ids) == len(set(ids)), "a tenant appeared on two pages"
    mine = [tenant.id for tenant in listed if tenant.id in {t.id for t in paged_tenants}]
    # All seven, once each, in registration order.
    assert mine == [tenant.id for tenant in paged_tenants]
    assert all(t.state not in (tenant_pb2.TENANT_STATE_DELETING, tenant_pb2.TENANT_STATE_DELETED) for t in listed)
    # Opaque tokens: URL-safe, and they do not spell out ids or slugs.
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        assert token.replace("-", "").replace("_", "").isalnum()
        assert not any(t.id in token or t.slug in token for t in listed)


async def test_list_tenants_page_token_is_bound_to_its_query(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    first = await stack.stubs.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(page_size=1), timeout=TIMEOUT)
    assert first.next_page_token
    # The same token with show_deleted flipped is another query.
    await expect_invalid_field(
        stack.stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(page_size=1, page_token=first.next_page_token, show_deleted=True),
            timeout=TIMEOUT,
        ),
        "page_token",
    )
    # A different page size is the same query: allowed.
    second = await stack.stubs.tenants.ListTenants(
        tenant_service_pb2.ListTenantsRequest(page_size=3, page_token=first.next_page_token), timeout=TIMEOUT
    )
    assert first.tenants[0].id not in {t.id for t in second.tenants}
    # A ListOperations token is not a ListTenants token.
    ops = await stack.stubs.operations.ListOperations(
        operation_service_pb2.ListOperationsRequest(page_size=1), timeout=TIMEOUT
    )
    assert ops.next_page_token
    await expect_invalid_field(
        stack.stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(page_token=ops.next_page_token), timeout=TIMEOUT
        ),
        "page_token",
    )


GARBAGE_PAGE_TOKENS = [
    "garbage",
    "x",
    "====",
    "\x00",
    "\u00e9t\u00e9",
    "eyJwIjoiMjAyNC0wMS0wMVQwMDowMDowMCswMDowMCIsImsiOiJ4IiwicSI6InRlbmFudHM6MCJ9",  # k is not a UUID
    "W1tbW1tbW1tbW1tbW1tbW1tb" * 2000,  # base64 of nested '[': deep JSON
    LONG,
]


@pytest.mark.parametrize("token", GARBAGE_PAGE_TOKENS, ids=lambda v: repr(v)[:30])
async def test_list_tenants_garbage_page_token_is_invalid_argument(stack: Stack, token: str) -> None:
    await expect_invalid_field(
        stack.stubs.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(page_token=token), timeout=TIMEOUT),
        "page_token",
    )


@pytest.mark.parametrize("page_size", [-1, -500, -(2**31)])
async def test_list_tenants_negative_page_size_is_invalid_argument(stack: Stack, page_size: int) -> None:
    await expect_invalid_field(
        stack.stubs.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(page_size=page_size), timeout=TIMEOUT),
        "page_size",
    )


@pytest.mark.parametrize("page_size", [10_000, 2**31 - 1])
async def test_list_tenants_huge_page_size_is_capped(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant], page_size: int
) -> None:
    response = await stack.stubs.tenants.ListTenants(
        tenant_service_pb2.ListTenantsRequest(page_size=page_size), timeout=TIMEOUT
    )
    assert 7 <= len(response.tenants) <= 500
    if len(response.tenants) < 500:
        assert not response.next_page_token


async def test_list_tenants_default_page_size_is_50(stack: Stack, paged_tenants: list[tenant_pb2.Tenant]) -> None:
    response = await stack.stubs.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(), timeout=TIMEOUT)
    assert 7 <= len(response.tenants) <= 50
    if len(response.tenants) < 50:
        assert not response.next_page_token


# --- OperationService --------------------------------------------------------

BAD_OPERATION_NAMES = [
    "",
    "nope",
    "operations/",
    "operation/tenant-provision-x",
    "tenants/abc",
    "operations/" + "x" * 201,
    "operations/" + LONG,
    "operations/\x00",
    "operations/tenant-provision-\x00",
]


@pytest.mark.parametrize("name", BAD_OPERATION_NAMES, ids=lambda v: repr(v)[:40])
async def test_get_operation_bad_name_is_invalid_argument(stack: Stack, name: str) -> None:
    await expect_invalid_field(
        stack.stubs.operations.GetOperation(operation_service_pb2.GetOperationRequest(name=name), timeout=TIMEOUT),
        "name",
    )


@pytest.mark.parametrize("name", BAD_OPERATION_NAMES, ids=lambda v: repr(v)[:40])
async def test_wait_operation_bad_name_is_invalid_argument(stack: Stack, name: str) -> None:
    request = operation_service_pb2.WaitOperationRequest(name=name)
    request.timeout.FromSeconds(1)
    await expect_invalid_field(stack.stubs.operations.WaitOperation(request, timeout=TIMEOUT), "name")


async def test_unknown_operation_is_not_found(stack: Stack) -> None:
    name = f"operations/tenant-provision-{uuid.uuid4()}"
    error = await expect_error(
        stack.stubs.operations.GetOperation(operation_service_pb2.GetOperationRequest(name=name), timeout=TIMEOUT),
        grpc.StatusCode.NOT_FOUND,
        "OPERATION_NOT_FOUND",
    )
    assert error_info(error).metadata["name"] == name
    request = operation_service_pb2.WaitOperationRequest(name=name)
    request.timeout.FromSeconds(1)
    await expect_error(
        stack.stubs.operations.WaitOperation(request, timeout=TIMEOUT),
        grpc.StatusCode.NOT_FOUND,
        "OPERATION_NOT_FOUND",
    )
    # Odd but well-formed workflow ids are simply not found.
    for odd in ("operations/'; DROP TABLE workflow_executions;--", "operations/\u0430", "operations/%"):
        await expect_error(
            stack.stubs.operations.GetOperation(operation_service_pb2.GetOperationRequest(name=odd), timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND,
            "OPERATION_NOT_FOUND",
        )


async def test_wait_operation_negative_timeout_is_invalid_argument(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    request = operation_service_pb2.WaitOperationRequest(name=f"operations/tenant-provision-{paged_tenants[0].id}")
    request.timeout.seconds = -1
    await expect_invalid_field(stack.stubs.operations.WaitOperation(request, timeout=TIMEOUT), "timeout")


async def _all_operation_pages(
    stack: Stack, page_size: int, **filters: Any
) -> tuple[list[operation_pb2.Operation], list[str]]:
    operations: list[operation_pb2.Operation] = []
    tokens: list[str] = []
    token = ""
    for _ in range(5_000):
        response = await stack.stubs.operations.ListOperations(
            operation_service_pb2.ListOperationsRequest(page_size=page_size, page_token=token, **filters),
            timeout=TIMEOUT,
        )
        assert len(response.operations) <= page_size
        operations.extend(response.operations)
        token = response.next_page_token
        if not token:
            return operations, tokens
        assert len(response.operations) == page_size
        tokens.append(token)
    raise AssertionError("pagination did not terminate")


async def test_list_operations_paginates_without_gaps_or_duplicates(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    operations, tokens = await _all_operation_pages(stack, page_size=3)
    names = [op.name for op in operations]
    assert len(names) == len(set(names)), "an operation appeared on two pages"
    expected = {f"operations/tenant-provision-{t.id}" for t in paged_tenants}
    assert expected <= set(names)
    # Newest first: my tenants were registered in order, so their operations come reversed.
    mine = [name for name in names if name in expected]
    assert mine == [f"operations/tenant-provision-{t.id}" for t in reversed(paged_tenants)]
    assert len(set(tokens)) == len(tokens)
    assert not any(t.id in token for t in paged_tenants for token in tokens)


async def test_list_operations_filters_by_tenant_and_state(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    tenant = paged_tenants[0]
    provision = f"operations/tenant-provision-{tenant.id}"
    only, _ = await _all_operation_pages(stack, page_size=10, tenant_id=tenant.id)
    assert [op.name for op in only] == [provision]
    assert only[0].tenant_id == tenant.id
    assert only[0].kind == operation_pb2.OPERATION_KIND_PROVISION
    assert only[0].done

    succeeded, _ = await _all_operation_pages(
        stack, page_size=10, tenant_id=tenant.id, state=operation_pb2.OPERATION_STATE_SUCCEEDED
    )
    assert [op.name for op in succeeded] == [provision]
    for other in (
        operation_pb2.OPERATION_STATE_PENDING,
        operation_pb2.OPERATION_STATE_RUNNING,
        operation_pb2.OPERATION_STATE_FAILED,
        operation_pb2.OPERATION_STATE_CANCELLED,
    ):
        none, _ = await _all_operation_pages(stack, page_size=10, tenant_id=tenant.id, state=other)
        assert none == [], other

    # State filter alone: every operation returned is in that state, and mine are among them.
    all_succeeded, _ = await _all_operation_pages(stack, page_size=4, state=operation_pb2.OPERATION_STATE_SUCCEEDED)
    assert all(op.state == operation_pb2.OPERATION_STATE_SUCCEEDED and op.done for op in all_succeeded)
    assert {f"operations/tenant-provision-{t.id}" for t in paged_tenants} <= {op.name for op in all_succeeded}

    # Unknown tenant: empty, not an error.
    empty, _ = await _all_operation_pages(stack, page_size=10, tenant_id=str(uuid.uuid4()))
    assert empty == []


async def test_list_operations_paginates_within_a_tenant(stack: Stack) -> None:
    registered = await stack.stubs.tenants.RegisterTenant(registration(), timeout=TIMEOUT)
    await wait_done(stack.stubs, registered.operation.name)
    deleted = await stack.stubs.tenants.DeleteTenant(
        tenant_service_pb2.DeleteTenantRequest(tenant_id=registered.tenant.id), timeout=TIMEOUT
    )
    assert (await wait_done(stack.stubs, deleted.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED

    operations, tokens = await _all_operation_pages(stack, page_size=1, tenant_id=registered.tenant.id)
    assert [op.name for op in operations] == [deleted.operation.name, registered.operation.name]
    assert [op.kind for op in operations] == [
        operation_pb2.OPERATION_KIND_DELETE,
        operation_pb2.OPERATION_KIND_PROVISION,
    ]
    assert len(tokens) == 1
    # The token belongs to this filter; another tenant or a state filter is another query.
    for other in (
        operation_service_pb2.ListOperationsRequest(page_size=1, page_token=tokens[0]),
        operation_service_pb2.ListOperationsRequest(page_size=1, page_token=tokens[0], tenant_id=str(uuid.uuid4())),
        operation_service_pb2.ListOperationsRequest(
            page_size=1,
            page_token=tokens[0],
            tenant_id=registered.tenant.id,
            state=operation_pb2.OPERATION_STATE_SUCCEEDED,
        ),
    ):
        await expect_invalid_field(stack.stubs.operations.ListOperations(other, timeout=TIMEOUT), "page_token")

    # The soft-deleted tenant is hidden from ListTenants unless show_deleted.
    visible, _ = await _all_tenant_pages(stack, page_size=500)
    assert registered.tenant.id not in {t.id for page in visible for t in page}
    with_deleted, _ = await _all_tenant_pages(stack, page_size=500, show_deleted=True)
    shown = [t for page in with_deleted for t in page if t.id == registered.tenant.id]
    assert [t.state for t in shown] == [tenant_pb2.TENANT_STATE_DELETED]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"tenant_id": "nope"}, "tenant_id"),
        ({"tenant_id": "\x00"}, "tenant_id"),
        ({"tenant_id": LONG}, "tenant_id"),
        ({"state": 99}, "state"),
        ({"state": -1}, "state"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "garbage"}, "page_token"),
        ({"page_token": "W1tbW1tbW1tbW1tbW1tbW1tb" * 2000}, "page_token"),
    ],
    ids=lambda v: repr(v)[:30],
)
async def test_list_operations_bad_request_is_invalid_argument(
    stack: Stack, request_fields: dict[str, Any], field: str
) -> None:
    await expect_invalid_field(
        stack.stubs.operations.ListOperations(
            operation_service_pb2.ListOperationsRequest(**request_fields), timeout=TIMEOUT
        ),
        field,
    )


async def test_list_operations_huge_page_size_is_capped(stack: Stack, paged_tenants: list[tenant_pb2.Tenant]) -> None:
    response = await stack.stubs.operations.ListOperations(
        operation_service_pb2.ListOperationsRequest(page_size=10_000), timeout=TIMEOUT
    )
    assert 7 <= len(response.operations) <= 500


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
    assert {TENANT_SERVICE, OPERATION_SERVICE, PROJECT_SERVICE, "grpc.health.v1.Health"} <= listed
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    services = {f"{f.package}.{s.name}": {m.name for m in s.method} for f in files for s in f.service}
    assert services[TENANT_SERVICE] == EXPECTED_METHODS[TENANT_SERVICE]


@pytest.mark.parametrize("service", ["", TENANT_SERVICE, OPERATION_SERVICE, PROJECT_SERVICE])
async def test_health_check_is_serving(stack: Stack, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(stack.channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_check_unknown_service_is_not_found(stack: Stack) -> None:
    stub = health_pb2_grpc.HealthStub(stack.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# --- forged but well-formed page tokens --------------------------------------


def _forged(position: str, key: str, query: str) -> str:
    raw = json.dumps({"p": position, "k": key, "q": query}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


EXTREME_POSITIONS = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59.999999-14:00",
    "9999-12-31T23:59:59.999999+00:00",
    "2024-01-01T00:00:00+00:00",
]


@pytest.mark.parametrize("position", EXTREME_POSITIONS)
async def test_forged_tenant_token_never_breaks_the_server(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant], position: str
) -> None:
    """Tokens are not signed: a forged one may page from anywhere, but is never an INTERNAL error."""
    token = _forged(position, str(uuid.UUID(int=0)), "tenants:0")
    try:
        response = await stack.stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(page_token=token), timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"
        assert error_info(error).reason == "INVALID_FIELD"
        assert set(field_violations(error)) == {"page_token"}
    else:
        assert len(response.tenants) <= 50


@pytest.mark.parametrize(
    ("position", "key"),
    [(p, "tenant-provision-x") for p in EXTREME_POSITIONS]
    + [("2999-01-01T00:00:00+00:00", k) for k in ("\x00", "a\x00b", "\ud800", "\x1b", "x" * 100_000, "\u0430", "")],
    ids=lambda v: repr(v)[:30],
)
async def test_forged_operation_token_never_breaks_the_server(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant], position: str, key: str
) -> None:
    token = _forged(position, key, "operations::")
    try:
        response = await stack.stubs.operations.ListOperations(
            operation_service_pb2.ListOperationsRequest(page_token=token), timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"
        assert error_info(error).reason == "INVALID_FIELD"
        assert set(field_violations(error)) == {"page_token"}
    else:
        assert len(response.operations) <= 50

"""TenantService over real gRPC, the requests that must not succeed and the reads:
hostile registration fields, GetTenant / DeleteTenant lookups, ListTenants
pagination and forged page tokens. Every bad request is answered with a
deliberate status carrying ErrorInfo (and BadRequest for invalid fields)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.v1 import operation_service_pb2, tenant_pb2, tenant_service_pb2
from tests.stack import (
    EXTREME_POSITIONS,
    Stack,
    all_tenant_pages,
    count_tenants,
    error_info,
    expect_error,
    expect_invalid_field,
    field_violations,
    forged_page_token,
    registration,
    wait_done,
)

TIMEOUT = 30.0


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
    ("display_name", "\u2800"),  # braille pattern blank
    ("display_name", "\u3164"),  # Hangul filler
    ("display_name", "\u115f\u1160"),
    ("display_name", "\uffa0 \u2800"),
    ("display_name", "\u2000\u2003\u200a"),
    ("display_name", "Ac\u200dme"),  # zero width joiner
    ("display_name", "Ac\u200bme"),  # zero width space
    ("display_name", "\ufeffAcme"),  # BOM
    ("display_name", "Acme\ue000"),  # private use
    ("display_name", "Acme\u0378"),  # unassigned
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
    ("admin_display_name", "\u3164"),
    ("admin_display_name", "Ada\u200b"),
    ("request_id", "not-a-uuid"),
    ("request_id", "\x00"),
    ("request_id", str(uuid.UUID(int=7)) + "\x00"),
    ("request_id", "'; DROP TABLE workflow_executions;--"),
    ("request_id", "{" + str(uuid.UUID(int=7)) + "}"),
    ("request_id", LONG),
    ("request_id", "\uff10" * 32),
]


def _valid_fields() -> dict[str, Any]:
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


async def test_display_names_are_stored_nfc(stack: Stack, engine: AsyncEngine) -> None:
    response = await stack.stubs.tenants.RegisterTenant(
        registration(display_name="  Cafe\u0301 Corp ", admin_display_name="Zoe\u0308"), timeout=TIMEOUT
    )
    assert response.tenant.display_name == "Caf\u00e9 Corp"
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
    assert tuple(stored) == ("Caf\u00e9 Corp", "Zo\u00eb")
    await wait_done(stack.stubs, response.operation.name)


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


async def test_list_tenants_pages_without_gaps_or_duplicates(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    pages, tokens = await all_tenant_pages(stack, page_size=2)
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


# --- forged but well-formed page tokens --------------------------------------


@pytest.mark.parametrize("position", EXTREME_POSITIONS)
async def test_forged_tenant_token_never_breaks_the_server(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant], position: str
) -> None:
    """Even a token signed with our key that points anywhere is never an INTERNAL error."""
    token = forged_page_token(position, str(uuid.UUID(int=0)), "tenants:0")
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

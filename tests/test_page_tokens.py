"""Page tokens against the real server: signed (HMAC-SHA256 with
TENANTRY_PAGE_TOKEN_KEY), bound to their query and, for ListProjects, to the
admitted tenant, and expiring. Every token that is not one of ours for this
query, tenant and hour is INVALID_ARGUMENT with a violation on page_token."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api.pagination import MAX_TOKEN_CHARS, TOKEN_LIFETIME
from tenantry.v1 import event_service_pb2, event_service_pb2_grpc, project_service_pb2, tenant_pb2, tenant_service_pb2
from tests.stack import (
    Stack,
    by_id,
    expect_invalid_field,
    field_violations,
    page_tokens_for_tests,
    register_active,
    running_stack,
    unsigned_page_token,
)

TIMEOUT = 10


def _list_tenants(page_token: str = "", page_size: int = 1) -> tenant_service_pb2.ListTenantsRequest:
    return tenant_service_pb2.ListTenantsRequest(page_size=page_size, page_token=page_token)


async def _first_tenants_token(stack: Stack) -> str:
    first = await stack.stubs.tenants.ListTenants(_list_tenants(), timeout=TIMEOUT)
    assert first.next_page_token, "the listing needs two tenants"
    return first.next_page_token


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_tokens_are_opaque_compact_and_accepted_by_the_api_that_issued_them(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    first = await stack.stubs.tenants.ListTenants(_list_tenants(), timeout=TIMEOUT)
    token = first.next_page_token
    assert token.replace("-", "").replace("_", "").isalnum() and "=" not in token
    assert len(token) < 150
    # Signed, not encrypted: it carries the last row's id (which the caller has
    # just received), not spelled out.
    assert first.tenants[0].id not in token
    second = await stack.stubs.tenants.ListTenants(_list_tenants(token), timeout=TIMEOUT)
    assert second.tenants and second.tenants[0].id != first.tenants[0].id


async def test_a_token_replayed_on_another_query_is_refused(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    token = await _first_tenants_token(stack)
    events = event_service_pb2_grpc.TenantEventServiceStub(stack.channel)
    await expect_invalid_field(
        stack.stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(page_token=token, show_deleted=True), timeout=TIMEOUT
        ),
        "page_token",
    )
    await expect_invalid_field(
        events.ListTenantEvents(event_service_pb2.ListTenantEventsRequest(page_token=token), timeout=TIMEOUT),
        "page_token",
    )


async def test_a_projects_token_is_refused_on_another_tenant(stack: Stack) -> None:
    tenant_a = await register_active(stack.stubs)
    tenant_b = await register_active(stack.stubs)
    for tenant in (tenant_a, tenant_b):
        for name in ("one", "two"):
            await stack.stubs.projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name=name), metadata=by_id(tenant.id), timeout=TIMEOUT
            )
    page = await stack.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(page_size=1), metadata=by_id(tenant_a.id), timeout=TIMEOUT
    )
    assert page.next_page_token
    # Same listing, same filters, another tenant: refused.
    await expect_invalid_field(
        stack.stubs.projects.ListProjects(
            project_service_pb2.ListProjectsRequest(page_size=1, page_token=page.next_page_token),
            metadata=by_id(tenant_b.id),
            timeout=TIMEOUT,
        ),
        "page_token",
    )
    # The control: the tenant that got it pages on.
    rest = await stack.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(page_size=1, page_token=page.next_page_token),
        metadata=by_id(tenant_a.id),
        timeout=TIMEOUT,
    )
    assert [p.name for p in rest.projects] == ["two"]


async def test_a_token_with_one_byte_flipped_is_refused(stack: Stack, paged_tenants: list[tenant_pb2.Tenant]) -> None:
    token = await _first_tenants_token(stack)
    raw = _raw(token)
    payload_bytes = len(raw) - 32
    tampered = [
        # Every byte of the payload, then a byte of the tag.
        *(_token(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]) for i in range(payload_bytes)),
        _token(raw[:-1] + bytes([raw[-1] ^ 0x80])),
        _token(raw[:-1]),  # tag cut short
        _token(raw[:payload_bytes]),  # no tag at all
    ]
    for forged in tampered:
        await expect_invalid_field(
            stack.stubs.tenants.ListTenants(_list_tenants(forged), timeout=TIMEOUT), "page_token"
        )


async def test_unsigned_tokens_of_the_old_format_are_refused(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    first = await stack.stubs.tenants.ListTenants(_list_tenants(), timeout=TIMEOUT)
    forged = unsigned_page_token(datetime.now(UTC).isoformat(), first.tenants[0].id, "tenants:0")
    await expect_invalid_field(stack.stubs.tenants.ListTenants(_list_tenants(forged), timeout=TIMEOUT), "page_token")


@pytest.mark.parametrize("token", ["A" * (MAX_TOKEN_CHARS + 1), "\u00e9" * 100, "A" * 43 + "!", "AAAA" * 8])
async def test_oversized_and_malformed_tokens_are_refused(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant], token: str
) -> None:
    await expect_invalid_field(stack.stubs.tenants.ListTenants(_list_tenants(token), timeout=TIMEOUT), "page_token")


async def test_another_key_refuses_the_tokens_and_the_same_key_accepts_them(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant], engine: AsyncEngine, temporal_client: Client
) -> None:
    token = await _first_tenants_token(stack)
    async with running_stack(
        engine=engine,
        client=temporal_client,
        with_worker=False,
        page_tokens=page_tokens_for_tests(key=secrets.token_bytes(32)),
    ) as other:
        await expect_invalid_field(other.stubs.tenants.ListTenants(_list_tenants(token), timeout=TIMEOUT), "page_token")
        # Its own tokens work there, and not on the first API.
        own = await _first_tenants_token(other)
        await other.stubs.tenants.ListTenants(_list_tenants(own), timeout=TIMEOUT)
        await expect_invalid_field(stack.stubs.tenants.ListTenants(_list_tenants(own), timeout=TIMEOUT), "page_token")
    # A replica with the same key (as behind a load balancer) continues the listing.
    async with running_stack(engine=engine, client=temporal_client, with_worker=False) as replica:
        page = await replica.stubs.tenants.ListTenants(_list_tenants(token), timeout=TIMEOUT)
        assert page.tenants


async def test_tokens_expire(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant], engine: AsyncEngine, temporal_client: Client
) -> None:
    now = [datetime.now(UTC)]
    async with running_stack(
        engine=engine,
        client=temporal_client,
        with_worker=False,
        page_tokens=page_tokens_for_tests(clock=lambda: now[0]),
    ) as api:
        token = await _first_tenants_token(api)
        now[0] += TOKEN_LIFETIME - timedelta(seconds=1)
        await api.stubs.tenants.ListTenants(_list_tenants(token), timeout=TIMEOUT)
        now[0] += timedelta(seconds=2)
        error = await expect_invalid_field(
            api.stubs.tenants.ListTenants(_list_tenants(token), timeout=TIMEOUT), "page_token"
        )
        assert "expired" in field_violations(error)["page_token"]
        # A fresh listing works, and so do its tokens.
        fresh = await _first_tenants_token(api)
        await api.stubs.tenants.ListTenants(_list_tenants(fresh), timeout=TIMEOUT)
        # Issued in the future (a clock far behind the issuer's): refused too.
        now[0] -= timedelta(hours=1)
        await expect_invalid_field(api.stubs.tenants.ListTenants(_list_tenants(fresh), timeout=TIMEOUT), "page_token")

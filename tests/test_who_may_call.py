"""Who may call what, against the real server: every refusal comes before any
row is touched or workflow started, tenant-bound tokens cannot probe other
tenants, and the caller's `sub` is recorded on operations and events.
(Token verification itself, key by key and attack by attack, is in
test_authentication.py.)"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    project_service_pb2,
    tenant_service_pb2,
)
from tenantry_dev.tokens import DEV_AUDIENCE, DEV_ISSUER, mint_token, new_signing_key
from tests.stack import (
    TEST_KEY,
    Stack,
    api_channel,
    by_id,
    error_info,
    expect_error,
    register_active,
    registration,
    stubs_for,
    token,
    wait_done,
)

TABLES = ("users", "tenants", "workflow_executions", "tenant_memberships", "tenant_events")


async def _row_counts(engine: AsyncEngine) -> dict[str, int]:
    counts = {}
    async with engine.connect() as conn:
        for table in TABLES:
            counts[table] = int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
    return counts


def _unsigned(claims: dict[str, object], header: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part(header)}.{part(claims)}."


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": "mallory",
        "scope": "tenantry.admin",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


def _bad_tokens() -> dict[str, tuple[str | None, str]]:
    """Every way a caller can fail to authenticate: token, expected reason."""
    stranger = new_signing_key("EdDSA")
    return {
        "none": (None, "TOKEN_MISSING"),
        "garbage": ("not-a-jwt", "TOKEN_INVALID"),
        "alg none": (_unsigned(_claims(), {"alg": "none", "typ": "JWT", "kid": TEST_KEY.kid}), "TOKEN_INVALID"),
        "foreign key": (mint_token(stranger, subject="mallory"), "TOKEN_INVALID"),
        "wrong issuer": (mint_token(TEST_KEY, issuer="https://elsewhere.example"), "TOKEN_INVALID"),
        "wrong audience": (mint_token(TEST_KEY, audience="another-service"), "TOKEN_INVALID"),
        # Past the 60 s leeway.
        "expired": (mint_token(TEST_KEY, ttl=timedelta(seconds=-120)), "TOKEN_EXPIRED"),
    }


@pytest.fixture
async def active_tenant(stack: Stack) -> AsyncIterator[str]:
    tenant = await register_active(stack.stubs)
    yield tenant.id


@pytest.mark.parametrize("case", list(_bad_tokens()))
async def test_unauthenticated_calls_touch_no_row_and_start_no_workflow(
    stack: Stack, engine: AsyncEngine, active_tenant: str, case: str
) -> None:
    bad_token, reason = _bad_tokens()[case]
    before = await _row_counts(engine)
    async with api_channel(f"127.0.0.1:{stack.api.port}", token=bad_token) as channel:
        stubs = stubs_for(channel)
        await expect_error(
            stubs.tenants.RegisterTenant(registration(), timeout=10), grpc.StatusCode.UNAUTHENTICATED, reason
        )
        await expect_error(
            stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=active_tenant), timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
            reason,
        )
        await expect_error(
            stubs.projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name="intruder"), metadata=by_id(active_tenant), timeout=10
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            reason,
        )
    assert await _row_counts(engine) == before
    # No operation row (counted above), so no deletion workflow could be started either.


async def test_a_missing_permission_is_denied_before_anything_changes(
    stack: Stack, engine: AsyncEngine, active_tenant: str
) -> None:
    before = await _row_counts(engine)
    async with api_channel(f"127.0.0.1:{stack.api.port}", token=token("tenants.get projects.read")) as channel:
        stubs = stubs_for(channel)
        # What the scope grants works...
        got = await stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=active_tenant), timeout=10)
        assert got.tenant.id == active_tenant
        # ...and nothing else does.
        error = await expect_error(
            stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=active_tenant), timeout=10),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_MISSING",
        )
        assert error_info(error).metadata["permission"] == "tenants.delete"
        await expect_error(
            stubs.projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name="nope"), metadata=by_id(active_tenant), timeout=10
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_MISSING",
        )
    assert await _row_counts(engine) == before
    # No operation row (counted above), so no deletion workflow could be started either.


async def test_tenant_bound_tokens_reach_their_tenant_only_and_learn_nothing_of_others(
    stack: Stack, active_tenant: str
) -> None:
    other = (await register_active(stack.stubs)).id
    bound = token("projects.read projects.write", tenant_id=active_tenant, subject="tenant-app")
    async with api_channel(f"127.0.0.1:{stack.api.port}", token=bound) as channel:
        projects = stubs_for(channel).projects
        created = await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name="mine"), metadata=by_id(active_tenant), timeout=10
        )
        assert created.project.name == "mine"
        # Another tenant, a tenant that does not exist, a slug: the same answer,
        # before any lookup, so existence cannot be probed.
        for metadata in (
            by_id(other),
            by_id(str(uuid.uuid4())),
            (("x-tenant-slug", "whoever"),),
        ):
            error = await expect_error(
                projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=metadata, timeout=10),
                grpc.StatusCode.PERMISSION_DENIED,
                "TENANT_NOT_PERMITTED",
            )
            assert other not in str(error.details()) and other not in str(error_info(error).metadata)


async def test_the_callers_subject_is_recorded_on_operations_and_events(stack: Stack) -> None:
    async with (
        api_channel(f"127.0.0.1:{stack.api.port}", token=token(subject="alice")) as alice_channel,
        api_channel(f"127.0.0.1:{stack.api.port}", token=token(subject="bob")) as bob_channel,
    ):
        alice, bob = stubs_for(alice_channel), stubs_for(bob_channel)
        request_id = str(uuid.uuid4())
        registered = await alice.tenants.RegisterTenant(registration(request_id=request_id), timeout=10)
        assert registered.operation.actor == "alice"
        assert (await wait_done(alice, registered.operation.name)).actor == "alice"
        deleted = await bob.tenants.DeleteTenant(
            tenant_service_pb2.DeleteTenantRequest(tenant_id=registered.tenant.id), timeout=10
        )
        assert deleted.operation.actor == "bob"
        await bob.tenants.PurgeTenant(tenant_service_pb2.PurgeTenantRequest(tenant_id=registered.tenant.id), timeout=10)
        await wait_done(bob, deleted.operation.name)

        events_stub = event_service_pb2_grpc.TenantEventServiceStub(alice_channel)
        listed = await events_stub.ListTenantEvents(
            event_service_pb2.ListTenantEventsRequest(tenant_id=registered.tenant.id), timeout=10
        )
    seen = [(e.type, e.actor, e.operation) for e in listed.events]
    assert seen == [
        (event_service_pb2.TENANT_EVENT_TYPE_REGISTERED, "alice", registered.operation.name),
        (event_service_pb2.TENANT_EVENT_TYPE_ACTIVATED, "alice", registered.operation.name),
        (event_service_pb2.TENANT_EVENT_TYPE_DELETED, "bob", deleted.operation.name),
        (event_service_pb2.TENANT_EVENT_TYPE_PURGED, "bob", deleted.operation.name),
    ]
    assert listed.events[0].request_id == request_id

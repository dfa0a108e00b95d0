"""OperationService over real gRPC: bad operation names, unknown operations,
WaitOperation timeouts, ListOperations filters and pagination, forged page tokens."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.migrations import tenant_head_revision
from tenantry.v1 import operation_pb2, operation_service_pb2, tenant_pb2, tenant_service_pb2
from tests.stack import (
    EXTREME_POSITIONS,
    Stack,
    all_tenant_pages,
    error_info,
    expect_error,
    expect_invalid_field,
    field_violations,
    forged_page_token,
    registration,
    wait_done,
)

TIMEOUT = 30.0
LONG = "x" * 10_000


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


async def test_list_operations_filters_by_kind(
    stack: Stack, worker_engine: AsyncEngine, paged_tenants: list[tenant_pb2.Tenant]
) -> None:
    """`kind` lists fleet rollouts (MIGRATE, no tenant) apart from tenants'
    operations, alone or with the other filters; its page token is its own."""
    rollouts = [f"fleet-migrate-kind-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for workflow_id in rollouts:  # one transaction each: distinct create times
        async with worker_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO workflow_executions (workflow_id, kind, state, actor, target_revision) "
                    "VALUES (:w, 'MIGRATE', 'SUCCEEDED', 'test', :t)"
                ),
                {"w": workflow_id, "t": tenant_head_revision()},
            )
    names = {f"operations/{workflow_id}" for workflow_id in rollouts}
    migrate = operation_pb2.OPERATION_KIND_MIGRATE

    listed, tokens = await _all_operation_pages(stack, page_size=1, kind=migrate)
    assert names <= {op.name for op in listed}
    assert all(op.kind == migrate and not op.tenant_id for op in listed)
    assert tokens
    # Newest first, like every listing.
    assert [op.name for op in listed if op.name in names] == [f"operations/{w}" for w in reversed(rollouts)]

    succeeded, _ = await _all_operation_pages(
        stack, page_size=50, kind=migrate, state=operation_pb2.OPERATION_STATE_SUCCEEDED
    )
    assert names <= {op.name for op in succeeded}
    running, _ = await _all_operation_pages(
        stack, page_size=50, kind=migrate, state=operation_pb2.OPERATION_STATE_RUNNING
    )
    assert not names & {op.name for op in running}

    tenant = paged_tenants[0]
    provisions, _ = await _all_operation_pages(
        stack, page_size=10, kind=operation_pb2.OPERATION_KIND_PROVISION, tenant_id=tenant.id
    )
    assert [op.name for op in provisions] == [f"operations/tenant-provision-{tenant.id}"]
    deletions, _ = await _all_operation_pages(
        stack, page_size=10, kind=operation_pb2.OPERATION_KIND_DELETE, tenant_id=tenant.id
    )
    assert deletions == []
    # Unset (OPERATION_KIND_UNSPECIFIED) is any kind: the rollouts and the tenants' operations.
    every, _ = await _all_operation_pages(stack, page_size=500)
    assert names | {f"operations/tenant-provision-{t.id}" for t in paged_tenants} <= {op.name for op in every}

    # A token of the kind=MIGRATE listing continues only that listing.
    for other in (
        operation_service_pb2.ListOperationsRequest(page_size=1, page_token=tokens[0]),
        operation_service_pb2.ListOperationsRequest(
            page_size=1, page_token=tokens[0], kind=operation_pb2.OPERATION_KIND_PROVISION
        ),
    ):
        await expect_invalid_field(stack.stubs.operations.ListOperations(other, timeout=TIMEOUT), "page_token")


async def test_list_operations_paginates_within_a_tenant(stack: Stack) -> None:
    registered = await stack.stubs.tenants.RegisterTenant(registration(), timeout=TIMEOUT)
    await wait_done(stack.stubs, registered.operation.name)
    deleted = await stack.stubs.tenants.DeleteTenant(
        tenant_service_pb2.DeleteTenantRequest(tenant_id=registered.tenant.id), timeout=TIMEOUT
    )
    await stack.stubs.tenants.PurgeTenant(
        tenant_service_pb2.PurgeTenantRequest(tenant_id=registered.tenant.id), timeout=TIMEOUT
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
    visible, _ = await all_tenant_pages(stack, page_size=500)
    assert registered.tenant.id not in {t.id for page in visible for t in page}
    with_deleted, _ = await all_tenant_pages(stack, page_size=500, show_deleted=True)
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
        ({"kind": 99}, "kind"),
        ({"kind": -1}, "kind"),
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


# --- forged but well-formed page tokens --------------------------------------


@pytest.mark.parametrize(
    ("position", "key"),
    [(p, "tenant-provision-x") for p in EXTREME_POSITIONS]
    # The long key stays under the server's 64 KiB receive limit once base64-encoded
    # (beyond it grpc refuses the request unread; tests/test_limits.py covers that).
    + [("2999-01-01T00:00:00+00:00", k) for k in ("\x00", "a\x00b", "\ud800", "\x1b", "x" * 40_000, "\u0430", "")],
    ids=lambda v: repr(v)[:30],
)
async def test_forged_operation_token_never_breaks_the_server(
    stack: Stack, paged_tenants: list[tenant_pb2.Tenant], position: str, key: str
) -> None:
    token = forged_page_token(position, key, "operations::")
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

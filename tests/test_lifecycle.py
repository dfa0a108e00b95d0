"""Suspend/resume, UpdateTenant (etags, update_mask, labels), request_id
replays and ListTenants filters, over real gRPC, PostgreSQL and Temporal."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import make_url, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from temporalio.client import Client

from tenant_api.headers import TENANT_ID_HEADER, TENANT_SLUG_HEADER
from tenantry.migrations import migrations_dir, tenant_head_revision
from tenantry.schema_names import schema_name_for
from tenantry.v1 import operation_pb2, project_service_pb2, tenant_pb2, tenant_service_pb2
from tests.stack import (
    TEST_SUBJECT,
    Stack,
    Stubs,
    api_channel,
    count_tenants,
    error_info,
    eventually,
    expect_error,
    expect_invalid_field,
    field_violations,
    register_active,
    registration,
    schema_exists,
    stubs_for,
    token,
    wait_done,
)

ABORTED = grpc.StatusCode.ABORTED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def suspend_request(tenant_id: str, **fields: Any) -> tenant_service_pb2.SuspendTenantRequest:
    return tenant_service_pb2.SuspendTenantRequest(tenant_id=tenant_id, reason=fields.pop("reason", "unpaid"), **fields)


async def suspend(stubs: Stubs, tenant_id: str, **fields: Any) -> tenant_pb2.Tenant:
    return (await stubs.tenants.SuspendTenant(suspend_request(tenant_id, **fields), timeout=30)).tenant


async def resume(stubs: Stubs, tenant_id: str, **fields: Any) -> tenant_pb2.Tenant:
    request = tenant_service_pb2.ResumeTenantRequest(tenant_id=tenant_id, **fields)
    return (await stubs.tenants.ResumeTenant(request, timeout=30)).tenant


def update_request(
    tenant_id: str, paths: list[str], *, etag: str = "", request_id: str = "", **fields: Any
) -> tenant_service_pb2.UpdateTenantRequest:
    request = tenant_service_pb2.UpdateTenantRequest(
        tenant=tenant_pb2.Tenant(id=tenant_id, etag=etag, **fields), request_id=request_id
    )
    request.update_mask.paths.extend(paths)
    return request


async def update(stubs: Stubs, request: tenant_service_pb2.UpdateTenantRequest) -> tenant_pb2.Tenant:
    return (await stubs.tenants.UpdateTenant(request, timeout=30)).tenant


async def get(stubs: Stubs, tenant_id: str) -> tenant_pb2.Tenant:
    return (await stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id), timeout=10)).tenant


async def events(engine: AsyncEngine, tenant_id: str) -> list[tuple[str, str, str, uuid.UUID | None]]:
    """(type, state, actor, request_id) of the tenant's events, in order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT type, state, actor, request_id FROM tenant_events WHERE tenant_id = :t ORDER BY sequence"),
            {"t": uuid.UUID(tenant_id)},
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]


async def event_types(engine: AsyncEngine, tenant_id: str) -> list[str]:
    return [event[0] for event in await events(engine, tenant_id)]


async def create_project(stubs: Stubs, metadata: tuple[tuple[str, str], ...]) -> Any:
    name = f"p-{uuid.uuid4().hex[:8]}"
    return await stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name=name), metadata=metadata, timeout=30
    )


# --- suspend and resume -------------------------------------------------------


async def test_suspend_refuses_tenant_calls_until_resumed(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    assert tenant.schema_version == tenant_head_revision()
    by_id = ((TENANT_ID_HEADER, tenant.id),)
    by_slug = ((TENANT_SLUG_HEADER, tenant.slug),)
    await create_project(stack.stubs, by_id)

    suspended = await suspend(stack.stubs, tenant.id, reason="  invoice 42 unpaid  ", etag=tenant.etag)
    assert suspended.state == tenant_pb2.TENANT_STATE_SUSPENDED
    assert suspended.state_message == "invoice 42 unpaid"
    assert suspended.etag != tenant.etag
    assert suspended.update_time.ToDatetime() >= tenant.update_time.ToDatetime()
    assert await get(stack.stubs, tenant.id) == suspended
    assert await schema_exists(engine, tenant.schema_name)  # data kept

    for metadata in (by_id, by_slug):
        error = await expect_error(create_project(stack.stubs, metadata), FAILED_PRECONDITION, "TENANT_SUSPENDED")
        assert tenant.id in (error.details() or "")
    # Suspending twice is a wrong state, and writes nothing.
    error = await expect_error(suspend(stack.stubs, tenant.id), FAILED_PRECONDITION, "WRONG_TENANT_STATE")
    assert error_info(error).metadata["state"] == "SUSPENDED"

    resumed = await resume(stack.stubs, tenant.id, etag=suspended.etag)
    assert resumed.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert resumed.state_message == ""
    assert resumed.etag not in (tenant.etag, suspended.etag)
    await create_project(stack.stubs, by_id)
    await create_project(stack.stubs, by_slug)
    error = await expect_error(resume(stack.stubs, tenant.id), FAILED_PRECONDITION, "WRONG_TENANT_STATE")
    assert error_info(error).metadata["state"] == "ACTIVE"

    assert await events(engine, tenant.id) == [
        ("REGISTERED", "CREATING", TEST_SUBJECT, None),
        ("ACTIVATED", "ACTIVE", TEST_SUBJECT, None),
        ("SUSPENDED", "SUSPENDED", TEST_SUBJECT, None),
        ("RESUMED", "ACTIVE", TEST_SUBJECT, None),
    ]


async def test_suspend_needs_a_reason_and_an_active_tenant(
    stack: Stack, idle_stack: Stack, engine: AsyncEngine
) -> None:
    tenant = await register_active(stack.stubs)
    for reason in ("", "   ", "x" * 501, "bad\x07bell"):
        await expect_invalid_field(suspend(stack.stubs, tenant.id, reason=reason), "reason")
    await expect_invalid_field(suspend(stack.stubs, "not-a-uuid"), "tenant_id")
    await expect_invalid_field(resume(stack.stubs, ""), "tenant_id")
    await expect_error(suspend(stack.stubs, str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")
    assert (await suspend(stack.stubs, tenant.id, reason="x" * 500)).state_message == "x" * 500

    creating = (await idle_stack.stubs.tenants.RegisterTenant(registration(), timeout=30)).tenant
    error = await expect_error(suspend(stack.stubs, creating.id), FAILED_PRECONDITION, "WRONG_TENANT_STATE")
    assert error_info(error).metadata["state"] == "CREATING"
    assert await event_types(engine, creating.id) == ["REGISTERED"]
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED", "SUSPENDED"]


async def test_a_suspended_tenant_can_be_deleted_and_purged(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    await suspend(stack.stubs, tenant.id)
    response = await stack.stubs.tenants.DeleteTenant(
        tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id), timeout=30
    )
    assert response.tenant.state == tenant_pb2.TENANT_STATE_DELETING
    await stack.stubs.tenants.PurgeTenant(tenant_service_pb2.PurgeTenantRequest(tenant_id=tenant.id), timeout=30)
    assert (await wait_done(stack.stubs, response.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
    assert (await get(stack.stubs, tenant.id)).state == tenant_pb2.TENANT_STATE_DELETED
    assert not await schema_exists(engine, tenant.schema_name)
    await expect_error(resume(stack.stubs, tenant.id), grpc.StatusCode.NOT_FOUND, "TENANT_DELETED")
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED", "SUSPENDED", "DELETED", "PURGED"]


# --- etags ---------------------------------------------------------------------


async def test_stale_or_foreign_etag_is_aborted(stack: Stack, engine: AsyncEngine) -> None:
    first = await register_active(stack.stubs)
    second = await register_active(stack.stubs)
    # Same row version: an etag of the version alone would match the other tenant.
    async with engine.connect() as conn:
        versions = await conn.execute(
            text("SELECT DISTINCT version FROM tenants WHERE id IN (:a, :b)"),
            {"a": uuid.UUID(first.id), "b": uuid.UUID(second.id)},
        )
        assert len(versions.all()) == 1
    assert first.etag != second.etag

    for call in (
        suspend(stack.stubs, first.id, etag=second.etag),
        update(stack.stubs, update_request(first.id, ["display_name"], etag=second.etag, display_name="Other")),
    ):
        error = await expect_error(call, ABORTED, "ETAG_MISMATCH")
        assert "ETAG_MISMATCH" not in (error.details() or "")  # a message, not a code

    renamed = await update(
        stack.stubs, update_request(first.id, ["display_name"], etag=first.etag, display_name="Renamed")
    )
    assert renamed.display_name == "Renamed" and renamed.etag != first.etag
    # The etag read before the rename is stale now, for every kind of change.
    await expect_error(suspend(stack.stubs, first.id, etag=first.etag), ABORTED, "ETAG_MISMATCH")
    await expect_error(
        update(stack.stubs, update_request(first.id, ["labels"], etag=first.etag, labels={"plan": "gold"})),
        ABORTED,
        "ETAG_MISMATCH",
    )
    suspended = await suspend(stack.stubs, first.id, etag=renamed.etag)
    await expect_error(resume(stack.stubs, first.id, etag=renamed.etag), ABORTED, "ETAG_MISMATCH")
    await resume(stack.stubs, first.id, etag=suspended.etag)

    assert await event_types(engine, first.id) == ["REGISTERED", "ACTIVATED", "UPDATED", "SUSPENDED", "RESUMED"]
    assert await get(stack.stubs, second.id) == second


# --- RegisterTenant labels ----------------------------------------------------------


async def test_register_stores_labels_and_a_replay_returns_them(stack: Stack, engine: AsyncEngine) -> None:
    labels = {"plan": "gold", "region": "eu-west-1", "a.b_c-d": ""}
    request_id = str(uuid.uuid4())
    request = registration(labels=labels, request_id=request_id)
    first = await stack.stubs.tenants.RegisterTenant(request, timeout=30)
    assert first.tenant.labels == labels
    assert (await wait_done(stack.stubs, first.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
    active = await get(stack.stubs, first.tenant.id)
    assert active.labels == labels and active.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert await list_all(stack.stubs, "label.plan=gold AND label.region=eu-west-1") == [first.tenant.id]

    # A replay (even one with other labels) returns the original tenant, labels included.
    replay = registration(request.slug, labels={"plan": "silver"}, request_id=request_id)
    again = await stack.stubs.tenants.RegisterTenant(replay, timeout=30)
    assert again.tenant == active and again.operation.name == first.operation.name
    assert await event_types(engine, first.tenant.id) == ["REGISTERED", "ACTIVATED"]

    # No labels: an empty map.
    plain = await stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
    assert dict(plain.tenant.labels) == {}


async def test_register_refuses_bad_labels(stack: Stack, engine: AsyncEngine) -> None:
    before = await count_tenants(engine)
    for labels, fields in (
        ({"Plan": "gold"}, {"labels['Plan']"}),
        ({"plan": "gold plus"}, {"labels['plan']"}),
        ({"plan": "g" * 64}, {"labels['plan']"}),
        ({f"k{i}": "v" for i in range(65)}, {"labels"}),
    ):
        error = await expect_error(
            stack.stubs.tenants.RegisterTenant(registration(labels=labels), timeout=30),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
        assert set(field_violations(error)) == fields, field_violations(error)
    # Reported together with the other fields' problems.
    await expect_invalid_field(
        stack.stubs.tenants.RegisterTenant(registration(display_name=" ", labels={"Plan": "x"}), timeout=30),
        "display_name",
        "labels['Plan']",
    )
    assert await count_tenants(engine) == before


async def delete_operations(engine: AsyncEngine, tenant_id: str) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text("SELECT count(*) FROM workflow_executions WHERE tenant_id = :t AND kind = 'DELETE'"),
                    {"t": uuid.UUID(tenant_id)},
                )
            ).scalar_one()
        )


async def test_delete_with_a_stale_or_foreign_etag_changes_nothing(
    stack: Stack, engine: AsyncEngine, temporal_client: Client
) -> None:
    tenant = await register_active(stack.stubs)
    other = await register_active(stack.stubs)
    renamed = await update(stack.stubs, update_request(tenant.id, ["display_name"], display_name="Renamed"))
    for etag in (tenant.etag, other.etag):  # stale; another tenant's
        await expect_error(
            stack.stubs.tenants.DeleteTenant(
                tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id, etag=etag), timeout=30
            ),
            ABORTED,
            "ETAG_MISMATCH",
        )
    # Nothing changed: no state, no operation (so no workflow), no event.
    assert await get(stack.stubs, tenant.id) == renamed
    assert await delete_operations(engine, tenant.id) == 0
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED", "UPDATED"]

    # The current etag deletes.
    deleted = await stack.stubs.tenants.DeleteTenant(
        tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id, etag=renamed.etag), timeout=30
    )
    assert deleted.tenant.state == tenant_pb2.TENANT_STATE_DELETING
    assert await get(stack.stubs, other.id) == other


async def test_repeated_delete_while_deleting_ignores_the_etag(
    idle_stack: Stack, stack: Stack, engine: AsyncEngine
) -> None:
    """The etag is checked only when a change would be made: a retry of a
    conditional delete (its etag now stale, the deletion bumped it) gets the
    same operation, and so does a repeat with any other etag."""
    tenant = await register_active(stack.stubs)
    # Deleted through the stack without a worker: the tenant stays DELETING.
    first = await idle_stack.stubs.tenants.DeleteTenant(
        tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id, etag=tenant.etag), timeout=30
    )
    assert first.tenant.etag != tenant.etag
    for etag in (tenant.etag, 'W/"not-an-etag"', first.tenant.etag):
        again = await idle_stack.stubs.tenants.DeleteTenant(
            tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id, etag=etag), timeout=30
        )
        assert again.operation.name == first.operation.name
        assert again.tenant.state == tenant_pb2.TENANT_STATE_DELETING
    assert await delete_operations(engine, tenant.id) == 1
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED", "DELETED"]


# --- request_id ------------------------------------------------------------------


async def test_repeated_request_id_returns_the_original_result(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    other = await register_active(stack.stubs)
    request_id = str(uuid.uuid4())
    first = await suspend(stack.stubs, tenant.id, reason="first", request_id=request_id)
    resumed = await resume(stack.stubs, tenant.id)
    # The repeat answers what the first call answered, and changes nothing.
    again = await suspend(stack.stubs, tenant.id, reason="first", request_id=request_id)
    assert again == first
    assert await get(stack.stubs, tenant.id) == resumed

    # The same id for another method or another tenant is a mistake, not a replay.
    await expect_invalid_field(resume(stack.stubs, tenant.id, request_id=request_id), "request_id")
    await expect_invalid_field(suspend(stack.stubs, other.id, request_id=request_id), "request_id")
    await expect_invalid_field(suspend(stack.stubs, tenant.id, request_id="not-a-uuid"), "request_id")

    # Concurrent repeats of one update: one change, one event, one answer.
    update_id = str(uuid.uuid4())
    request = update_request(tenant.id, ["labels"], request_id=update_id, labels={"plan": "gold"})
    answers = await asyncio.gather(*(update(stack.stubs, request) for _ in range(6)))
    assert all(answer == answers[0] for answer in answers)
    assert answers[0].labels == {"plan": "gold"}

    recorded = await events(engine, tenant.id)
    assert [(e[0], e[3]) for e in recorded[2:]] == [
        ("SUSPENDED", uuid.UUID(request_id)),
        ("RESUMED", None),
        ("UPDATED", uuid.UUID(update_id)),
    ]
    assert await event_types(engine, other.id) == ["REGISTERED", "ACTIVATED"]


# --- UpdateTenant ------------------------------------------------------------------


async def test_update_mask_is_required_and_checked(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    for paths in ([], ["slug"], ["state"], ["display_name", "etag"], ["labels.plan"], ["*"]):
        error = await expect_invalid_field(
            update(stack.stubs, update_request(tenant.id, paths, display_name="X", labels={"a": "b"})), "update_mask"
        )
        assert field_violations(error)["update_mask"]
    await expect_invalid_field(update(stack.stubs, update_request("", ["display_name"])), "tenant.id")
    await expect_invalid_field(
        update(stack.stubs, update_request(tenant.id, ["display_name"], display_name="  ")), "tenant.display_name"
    )
    await expect_error(
        update(stack.stubs, update_request(str(uuid.uuid4()), ["display_name"], display_name="Ghost")),
        grpc.StatusCode.NOT_FOUND,
        "TENANT_NOT_FOUND",
    )
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED"]

    # Only the masked fields change: display_name stays when only labels are named.
    labelled = await update(
        stack.stubs,
        update_request(tenant.id, ["labels"], display_name="Ignored", labels={"plan": "gold", "region": "eu-west.1"}),
    )
    assert labelled.display_name == tenant.display_name
    assert labelled.labels == {"plan": "gold", "region": "eu-west.1"}
    both = await update(
        stack.stubs,
        update_request(tenant.id, ["display_name", "labels"], display_name="  Acme Ltd ", labels={"plan": "free"}),
    )
    assert both.display_name == "Acme Ltd"
    assert both.labels == {"plan": "free"}  # `labels` replaces the whole map
    cleared = await update(stack.stubs, update_request(tenant.id, ["labels"]))
    assert cleared.labels == {}
    assert await get(stack.stubs, tenant.id) == cleared
    assert await events(engine, tenant.id) == [
        ("REGISTERED", "CREATING", TEST_SUBJECT, None),
        ("ACTIVATED", "ACTIVE", TEST_SUBJECT, None),
        *[("UPDATED", "ACTIVE", TEST_SUBJECT, None)] * 3,
    ]


async def test_labels_are_validated(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    bad_labels = [
        {"Plan": "gold"},
        {"1plan": "gold"},
        {"k" * 64: "v"},
        {"plan": "g" * 64},
        {"plan": "gold plus"},
        {"plan": "gölde"},
        {"": "x"},
        {f"k{i}": "v" for i in range(65)},
    ]
    for labels in bad_labels:
        error = await expect_error(
            update(stack.stubs, update_request(tenant.id, ["labels"], labels=labels)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
        assert all(name.startswith("tenant.labels") for name in field_violations(error)), field_violations(error)
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED"]

    # The limits themselves: 64 labels, a 63-character key and value, an empty value.
    edge = {f"k{i}": "v" for i in range(62)} | {"k" * 63: "V" * 63, "a.b_c-d": ""}
    assert len(edge) == 64
    assert (await update(stack.stubs, update_request(tenant.id, ["labels"], labels=edge))).labels == edge


async def test_update_of_a_deleting_tenant_is_refused(idle_stack: Stack, stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    await idle_stack.stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id))
    for call in (
        update(idle_stack.stubs, update_request(tenant.id, ["display_name"], display_name="Late")),
        suspend(idle_stack.stubs, tenant.id),
        resume(idle_stack.stubs, tenant.id),
    ):
        error = await expect_error(call, FAILED_PRECONDITION, "WRONG_TENANT_STATE")
        assert error_info(error).metadata["state"] == "DELETING"
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED", "DELETED"]


# --- ListTenants filter ----------------------------------------------------------------


async def list_all(stubs: Stubs, filter: str, page_size: int = 1, show_deleted: bool = False) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        response = await stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(
                filter=filter, page_size=page_size, page_token=token, show_deleted=show_deleted
            ),
            timeout=30,
        )
        ids += [t.id for t in response.tenants]
        token = response.next_page_token
        if not token:
            return ids


async def test_list_filters_by_state_and_labels(stack: Stack) -> None:
    run = uuid.uuid4().hex[:12]
    tenants = [await register_active(stack.stubs) for _ in range(3)]
    for i, tenant in enumerate(tenants):
        labels = {"run": run, "plan": "gold" if i < 2 else "free"}
        await update(stack.stubs, update_request(tenant.id, ["labels"], labels=labels))
    await suspend(stack.stubs, tenants[1].id)
    ids = [t.id for t in tenants]

    assert await list_all(stack.stubs, f"label.run={run}") == ids
    assert await list_all(stack.stubs, f"label.run={run} AND label.plan=gold") == ids[:2]
    assert await list_all(stack.stubs, f"label.run={run} AND state=SUSPENDED") == ids[1:2]
    assert await list_all(stack.stubs, f"state=TENANT_STATE_ACTIVE AND label.run={run}", page_size=50) == [
        ids[0],
        ids[2],
    ]
    assert await list_all(stack.stubs, f"label.run={run} AND label.plan=platinum") == []
    assert await list_all(stack.stubs, f"label.run={run} AND state=DELETED", show_deleted=True) == []
    assert ids[1] in await list_all(stack.stubs, "state=SUSPENDED", page_size=500)

    # A page token belongs to its filter.
    first = await stack.stubs.tenants.ListTenants(
        tenant_service_pb2.ListTenantsRequest(filter=f"label.run={run}", page_size=1), timeout=30
    )
    assert first.next_page_token
    await expect_invalid_field(
        stack.stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(
                filter=f"label.run={run} AND label.plan=gold", page_size=1, page_token=first.next_page_token
            )
        ),
        "page_token",
    )
    await expect_invalid_field(
        stack.stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(page_size=1, page_token=first.next_page_token)
        ),
        "page_token",
    )


async def test_bad_filters_are_invalid(stack: Stack) -> None:
    for bad in (
        "state",
        "state=",
        "state=BOGUS",
        "state=ACTIVE AND state=SUSPENDED",
        "state=DELETED",
        "plan=gold",
        "label.=gold",
        "label.Plan=gold",
        "label.plan=gold plus",
        "label.plan=gold and state=ACTIVE",
        "label.plan=gold AND",
        "label.plan=gold OR state=ACTIVE",
        "label.plan=a AND label.plan=b",
    ):
        await expect_invalid_field(
            stack.stubs.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(filter=bad), timeout=30), "filter"
        )


# --- races ------------------------------------------------------------------------------


async def _waiters_behind(engine: AsyncEngine, blockers: list[int]) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE pg_blocking_pids(pid) && CAST(:b AS int[]) ORDER BY pid"),
            {"b": blockers},
        )
        return [r[0] for r in rows]


async def test_resume_racing_a_delete_never_revives_the_tenant(
    stack: Stack, idle_stack: Stack, engine: AsyncEngine
) -> None:
    tenant = await register_active(stack.stubs)
    await suspend(stack.stubs, tenant.id)
    async with engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM tenants WHERE id = :t FOR UPDATE"), {"t": uuid.UUID(tenant.id)}
        )  # the row is locked until the rollback below
        holder_pid = int((await holder.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        deleting = asyncio.ensure_future(
            idle_stack.stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id))
        )
        delete_pid = (await eventually(lambda: _waiters_behind(engine, [holder_pid]), timeout=30))[0]
        # No etag: the state check alone must refuse it (with the etag read
        # before the delete it would be ABORTED ETAG_MISMATCH instead).
        resuming = asyncio.create_task(resume(idle_stack.stubs, tenant.id))

        async def resume_waiting() -> list[int]:
            return [p for p in await _waiters_behind(engine, [holder_pid, delete_pid]) if p != delete_pid]

        await eventually(resume_waiting, timeout=30)
        await holder.rollback()
        # The delete queued first and takes the row first; the resume then finds DELETING.
        deleted = await deleting
        assert deleted.tenant.state == tenant_pb2.TENANT_STATE_DELETING
        error = await expect_error(resuming, FAILED_PRECONDITION, "WRONG_TENANT_STATE")
        assert error_info(error).metadata["state"] == "DELETING"
    assert (await get(stack.stubs, tenant.id)).state == tenant_pb2.TENANT_STATE_DELETING
    assert await event_types(engine, tenant.id) == ["REGISTERED", "ACTIVATED", "SUSPENDED", "DELETED"]


# --- who may call ---------------------------------------------------------------------


async def test_lifecycle_calls_need_tenants_update_and_record_the_caller(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    target = f"127.0.0.1:{stack.api.port}"
    async with api_channel(target, token=token("tenants.get", subject="reader")) as channel:
        reader = stubs_for(channel)
        for call in (
            suspend(reader, tenant.id),
            resume(reader, tenant.id),
            update(reader, update_request(tenant.id, ["display_name"], display_name="Nope")),
        ):
            error = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
            assert error_info(error).metadata["permission"] == "tenants.update"
    async with api_channel(target, token=token("tenants.update tenants.get", subject="operator-7")) as channel:
        operator = stubs_for(channel)
        await suspend(operator, tenant.id)
        await resume(operator, tenant.id)
    assert [(e[0], e[2]) for e in await events(engine, tenant.id)][2:] == [
        ("SUSPENDED", "operator-7"),
        ("RESUMED", "operator-7"),
    ]


# --- the control-plane migration ----------------------------------------------------------


def _alembic(database_url: str, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir() / "control_plane"))
    config.attributes["database_url"] = database_url
    getattr(command, action)(config, revision)


async def test_migration_0004_backfills_schema_version_and_widens_the_state_check(database_url: str) -> None:
    url = make_url(database_url)
    name = f"lifecycle_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    isolated = url.set(database=name).render_as_string(hide_password=False)
    db = create_async_engine(isolated)
    try:
        await asyncio.to_thread(_alembic, isolated, "upgrade", "0003")
        active, creating, user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        async with db.begin() as conn:
            await conn.execute(
                text("INSERT INTO users (id, email, display_name) VALUES (:u, 'a@b.example.com', 'A')"), {"u": user}
            )
            for tenant_id, state in ((active, "ACTIVE"), (creating, "CREATING")):
                await conn.execute(
                    text(
                        "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name) "
                        "VALUES (:id, :slug, 'T', :u, :state, :schema)"
                    ),
                    {
                        "id": tenant_id,
                        "slug": f"s{tenant_id.hex[:8]}",
                        "u": user,
                        "state": state,
                        "schema": schema_name_for(tenant_id),
                    },
                )
            schema = schema_name_for(active)
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            await conn.execute(text(f'CREATE TABLE "{schema}".alembic_version (version_num varchar(32) PRIMARY KEY)'))
            await conn.execute(text(f"INSERT INTO \"{schema}\".alembic_version VALUES ('0001')"))
        await asyncio.to_thread(_alembic, isolated, "upgrade", "head")
        async with db.begin() as conn:
            rows = await conn.execute(text("SELECT id, schema_version, labels FROM tenants ORDER BY slug"))
            found = {r[0]: (r[1], r[2]) for r in rows}
            assert found == {active: ("0001", {}), creating: ("", {})}
            await conn.execute(text("UPDATE tenants SET state = 'SUSPENDED' WHERE id = :id"), {"id": active})
        async with db.begin() as conn:
            with pytest.raises(IntegrityError):
                await conn.execute(text("UPDATE tenants SET state = 'ASLEEP' WHERE id = :id"), {"id": active})
        async with db.begin() as conn:
            await conn.execute(text("UPDATE tenants SET state = 'ACTIVE' WHERE id = :id"), {"id": active})
        await asyncio.to_thread(_alembic, isolated, "downgrade", "0003")
        await asyncio.to_thread(_alembic, isolated, "upgrade", "head")
    finally:
        await db.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()

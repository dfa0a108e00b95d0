"""RegisterTenant over real gRPC, PostgreSQL and Temporal: races, idempotency,
commit-first ordering and an unreachable workflow engine."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, Interceptor, OutboundInterceptor, StartWorkflowInput, WorkflowHandle

from provisioner_worker.reconciler import ReconcileReport
from tenantry.db.engine import create_engine
from tenantry.v1 import operation_pb2, operation_service_pb2, tenant_pb2, tenant_service_pb2
from tenantry.workflow_contract import PROVISION_WORKFLOW, RECONCILE_WORKFLOW, ReconcileInput
from tests.stack import (
    BUG_CODES,
    Stack,
    error_info,
    field_violations,
    registration,
    running_stack,
    stack_without_temporal,
    wait_done,
)

PROVISION_PREFIX = "tenant-provision-"
_TIMEOUT = timedelta(seconds=90)


def _rpc_errors(results: list[Any]) -> list[grpc.aio.AioRpcError]:
    unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, grpc.aio.AioRpcError)]
    assert not unexpected, f"non-gRPC failures: {unexpected!r}"
    return [r for r in results if isinstance(r, grpc.aio.AioRpcError)]


async def _scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


# --- races on the slug and on the admin email ---------------------------------------------------


async def test_concurrent_same_slug_has_exactly_one_winner(stack: Stack, engine: AsyncEngine) -> None:
    slug = f"race-{uuid.uuid4().hex[:10]}"
    emails = [f"admin{i}@{uuid.uuid4().hex[:8]}.example.com" for i in range(25)]
    results = await asyncio.gather(
        *(stack.stubs.tenants.RegisterTenant(registration(slug, admin_email=e), timeout=60) for e in emails),
        return_exceptions=True,
    )
    errors = _rpc_errors(results)
    winners = [r for r in results if isinstance(r, tenant_service_pb2.RegisterTenantResponse)]
    assert not [e for e in errors if e.code() in BUG_CODES], [(e.code(), e.details()) for e in errors]
    assert len(winners) == 1, f"{len(winners)} winners"
    assert len(errors) == 24
    for err in errors:
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, (err.code(), err.details())
        assert error_info(err).reason == "TENANT_SLUG_TAKEN"

    winner = winners[0]
    assert winner.tenant.slug == slug
    assert winner.tenant.state == tenant_pb2.TENANT_STATE_CREATING
    assert await _scalar(engine, "SELECT count(*) FROM tenants WHERE slug = :s", s=slug) == 1
    assert (
        await _scalar(
            engine,
            "SELECT count(*) FROM workflow_executions w JOIN tenants t ON t.id = w.tenant_id WHERE t.slug = :s",
            s=slug,
        )
        == 1
    )
    # The losers' transactions rolled back entirely: no user rows for their emails.
    loser_emails = [e.lower() for e in emails if e != winner.tenant.admin_email]
    assert len(loser_emails) == 24
    assert await _scalar(engine, "SELECT count(*) FROM users WHERE lower(email) = ANY(:e)", e=loser_emails) == 0

    done = await wait_done(stack.stubs, winner.operation.name)
    assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED


async def test_concurrent_registrations_share_one_admin_user_case_insensitively(
    stack: Stack, engine: AsyncEngine
) -> None:
    local, domain = f"Shared.Admin.{uuid.uuid4().hex[:8]}", "Example.COM"
    variants = [local.upper(), local.lower(), local, local.swapcase()]
    emails = [f"{variants[i % len(variants)]}@{domain if i % 2 else domain.lower()}" for i in range(12)]
    assert len({e.lower() for e in emails}) == 1 and len(set(emails)) > 1
    results = await asyncio.gather(
        *(stack.stubs.tenants.RegisterTenant(registration(admin_email=e), timeout=60) for e in emails),
        return_exceptions=True,
    )
    errors = _rpc_errors(results)
    assert not errors, [(e.code(), e.details()) for e in errors]
    responses = [r for r in results if isinstance(r, tenant_service_pb2.RegisterTenantResponse)]
    assert len(responses) == 12

    async with engine.connect() as conn:
        users = (
            await conn.execute(text("SELECT id, email FROM users WHERE lower(email) = :e"), {"e": emails[0].lower()})
        ).all()
        assert len(users) == 1, users
        user_id, stored_email = users[0]
        admins = (
            await conn.execute(
                text("SELECT admin_user_id FROM tenants WHERE id = ANY(:ids)"),
                {"ids": [uuid.UUID(r.tenant.id) for r in responses]},
            )
        ).scalars()
        assert list(admins) == [user_id] * 12
    # Every response reports the address in lower case, not the stored casing
    # (the first registrant's), whatever case the caller used.
    assert stored_email in emails
    assert {r.tenant.admin_email for r in responses} == {emails[0].lower()}
    for response in responses:
        assert (await wait_done(stack.stubs, response.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED


async def _tenant_views(stack: Stack, tenant_id: str) -> list[tenant_pb2.Tenant]:
    """The tenant as GetTenant and ListTenants show it."""
    got = (await stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=tenant_id))).tenant
    listed: list[tenant_pb2.Tenant] = []
    token = ""
    while True:
        page = await stack.stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(page_size=500, page_token=token)
        )
        listed += [t for t in page.tenants if t.id == tenant_id]
        token = page.next_page_token
        if not token:
            break
    assert len(listed) == 1
    return [got, listed[0]]


async def test_registration_does_not_reveal_that_an_email_is_taken(stack: Stack) -> None:
    """A caller registering with somebody's address in another case must see
    exactly what a caller with a brand-new address sees: the stored casing of
    the existing user's email would otherwise confirm the account exists."""
    tag = uuid.uuid4().hex[:8]
    victim = await stack.stubs.tenants.RegisterTenant(registration(admin_email=f"Victim.{tag}@Example.COM"))
    assert victim.tenant.admin_email == f"victim.{tag}@example.com"

    probe_existing = f"VICTIM.{tag}@example.com"  # the same user, another case
    probe_new = f"NOBODY.{tag}@example.com"  # no such user
    existing = await stack.stubs.tenants.RegisterTenant(registration(admin_email=probe_existing))
    new = await stack.stubs.tenants.RegisterTenant(registration(admin_email=probe_new))

    assert existing.tenant.admin_email == probe_existing.lower()
    assert new.tenant.admin_email == probe_new.lower()
    for response in (victim, existing, new):
        await wait_done(stack.stubs, response.operation.name)
    # GetTenant and ListTenants follow the same rule for both.
    for response, probe in ((existing, probe_existing), (new, probe_new)):
        assert [t.admin_email for t in await _tenant_views(stack, response.tenant.id)] == [probe.lower()] * 2
    # The same fields are set in both responses: nothing else tells them apart.
    assert [f.name for f, _ in existing.tenant.ListFields()] == [f.name for f, _ in new.tenant.ListFields()]


# --- request_id idempotency ---------------------------------------------------------------------


async def test_same_request_id_sequentially_returns_the_original(stack: Stack, engine: AsyncEngine) -> None:
    request = registration(request_id=str(uuid.uuid4()))
    first = await stack.stubs.tenants.RegisterTenant(request)
    second = await stack.stubs.tenants.RegisterTenant(request)
    assert second.tenant.id == first.tenant.id
    assert second.operation.name == first.operation.name

    await wait_done(stack.stubs, first.operation.name)
    third = await stack.stubs.tenants.RegisterTenant(request)
    assert third.tenant.id == first.tenant.id
    assert third.operation.name == first.operation.name
    assert third.tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert third.operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    assert await _scalar(engine, "SELECT count(*) FROM tenants WHERE slug = :s", s=request.slug) == 1


async def test_same_request_id_raced_concurrently_returns_one_tenant(stack: Stack, engine: AsyncEngine) -> None:
    request = registration(request_id=str(uuid.uuid4()))
    results = await asyncio.gather(
        *(stack.stubs.tenants.RegisterTenant(request, timeout=60) for _ in range(10)), return_exceptions=True
    )
    errors = _rpc_errors(results)
    assert not errors, [(e.code(), e.details()) for e in errors]
    responses = [r for r in results if isinstance(r, tenant_service_pb2.RegisterTenantResponse)]
    assert len({r.tenant.id for r in responses}) == 1
    assert len({r.operation.name for r in responses}) == 1
    assert await _scalar(engine, "SELECT count(*) FROM tenants WHERE slug = :s", s=request.slug) == 1
    assert (
        await _scalar(
            engine, "SELECT count(*) FROM workflow_executions WHERE request_id = :r", r=uuid.UUID(request.request_id)
        )
        == 1
    )
    assert (await wait_done(stack.stubs, responses[0].operation.name)).state == (
        operation_pb2.OPERATION_STATE_SUCCEEDED
    )


async def test_malformed_request_id_is_invalid_argument(stack: Stack, engine: AsyncEngine) -> None:
    for bad in ("not-a-uuid", "12345", str(uuid.uuid4())[:-1], "{" + str(uuid.uuid4()) + "}"):
        request = registration(request_id=bad)
        try:
            await stack.stubs.tenants.RegisterTenant(request)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, err.code())
            assert error_info(err).reason == "INVALID_FIELD"
            assert "request_id" in field_violations(err)
        else:
            raise AssertionError(f"request_id {bad!r} was accepted")
        assert await _scalar(engine, "SELECT count(*) FROM tenants WHERE slug = :s", s=request.slug) == 0


# --- commit first, then start -------------------------------------------------------------------


@dataclass
class Observation:
    workflow_id: str
    workflow: str
    tenant_state: str | None
    operation_state: str | None


@dataclass
class CommitObserver(Interceptor):
    """At the moment a start reaches the Temporal client, reads the database on
    a connection of its own and records what is already committed."""

    observer_engine: AsyncEngine
    seen: list[Observation] = field(default_factory=list)

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _ObservingOutbound(next, self)


class _ObservingOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, root: CommitObserver) -> None:
        super().__init__(next)
        self._root = root

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        if input.id.startswith(PROVISION_PREFIX):
            tenant_id = uuid.UUID(input.id.removeprefix(PROVISION_PREFIX))
            async with self._root.observer_engine.connect() as conn:
                tenant_state = (
                    await conn.execute(text("SELECT state FROM tenants WHERE id = :id"), {"id": tenant_id})
                ).scalar_one_or_none()
                operation_state = (
                    await conn.execute(
                        text("SELECT state FROM workflow_executions WHERE workflow_id = :w AND tenant_id = :id"),
                        {"w": input.id, "id": tenant_id},
                    )
                ).scalar_one_or_none()
            workflow = input.workflow if isinstance(input.workflow, str) else repr(input.workflow)
            self._root.seen.append(Observation(input.id, workflow, tenant_state, operation_state))
        return await super().start_workflow(input)


async def test_tenant_and_operation_are_committed_before_the_workflow_start(
    engine: AsyncEngine, database_url: str, temporal_client: Client
) -> None:
    # Its own engine and pool: nothing it reads can come from the API's transaction.
    observer_engine = create_engine(database_url)
    observer = CommitObserver(observer_engine)
    config = temporal_client.config()
    config["interceptors"] = [observer]
    client = Client(**config)
    try:
        async with running_stack(engine=engine, client=client) as stack:
            responses = [await stack.stubs.tenants.RegisterTenant(registration()) for _ in range(3)]
            for response in responses:
                done = await wait_done(stack.stubs, response.operation.name)
                assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    finally:
        await observer_engine.dispose()

    for response in responses:
        workflow_id = PROVISION_PREFIX + response.tenant.id
        observed = [o for o in observer.seen if o.workflow_id == workflow_id]
        assert observed, f"no start of {workflow_id} went through the client"
        for seen in observed:
            assert seen.workflow == PROVISION_WORKFLOW
            assert seen.tenant_state == "CREATING", seen
            assert seen.operation_state == "PENDING", seen


# --- Temporal unreachable at registration time ----------------------------------------------------


async def test_registration_succeeds_while_temporal_is_unreachable_and_reconciler_finishes_it(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    async with stack_without_temporal(engine) as dead:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await dead.stubs.tenants.RegisterTenant(registration(), timeout=30)
        assert loop.time() - started < 15
    assert response.tenant.state == tenant_pb2.TENANT_STATE_CREATING
    assert response.operation.state == operation_pb2.OPERATION_STATE_PENDING
    assert not response.operation.done
    workflow_id = response.operation.name.removeprefix("operations/")
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT t.state, w.state FROM tenants t JOIN workflow_executions w ON w.tenant_id = t.id "
                    "WHERE w.workflow_id = :w"
                ),
                {"w": workflow_id},
            )
        ).one()
    assert tuple(row) == ("CREATING", "PENDING")

    # Temporal is back: the reconciler (on the same task queue as its starter and
    # the worker) starts the pending workflow, which provisions the tenant.
    async with running_stack(engine=engine, client=temporal_client) as live:
        report = await temporal_client.execute_workflow(
            RECONCILE_WORKFLOW,
            ReconcileInput(pending_threshold_seconds=0),
            id=f"test-reconcile-{uuid.uuid4().hex}",
            task_queue=live.task_queue,
            result_type=ReconcileReport,
            execution_timeout=_TIMEOUT,
        )
        assert workflow_id in report.started
        operation = await wait_done(live.stubs, response.operation.name)
        assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
        tenant = (
            await live.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id))
        ).tenant
        assert tenant.state == tenant_pb2.TENANT_STATE_ACTIVE


# --- WaitOperation ------------------------------------------------------------------------------


async def test_wait_operation_returns_once_done(stack: Stack) -> None:
    response = await stack.stubs.tenants.RegisterTenant(registration())
    request = operation_service_pb2.WaitOperationRequest(name=response.operation.name)
    request.timeout.FromSeconds(60)
    waited = await stack.stubs.operations.WaitOperation(request, timeout=70)
    assert waited.operation.done
    assert waited.operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    assert waited.operation.name == response.operation.name


async def test_wait_operation_times_out_not_done_for_a_pending_operation(engine: AsyncEngine) -> None:
    async with stack_without_temporal(engine) as dead:
        response = await dead.stubs.tenants.RegisterTenant(registration(), timeout=30)
        assert response.operation.state == operation_pb2.OPERATION_STATE_PENDING
        request = operation_service_pb2.WaitOperationRequest(name=response.operation.name)
        request.timeout.FromSeconds(1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waited = await dead.stubs.operations.WaitOperation(request, timeout=30)
        assert loop.time() - started < 15
    assert not waited.operation.done
    assert waited.operation.state == operation_pb2.OPERATION_STATE_PENDING
    assert waited.operation.name == response.operation.name

"""The tests' support module: the API in-process against real PostgreSQL and a
real Temporal dev server, tenant-api / provisioner-worker as real OS processes,
error-detail readers, and what Temporal recorded of a workflow. Helpers that
tenantry-dev and the benchmark use too live in tenantry_dev.embedded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import io
import json
import os
import pkgutil
import secrets
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer, Worker

import tenantry.v1 as tenantry_v1
from provisioner_worker.worker import activities_for, build_worker
from provisioner_worker.workflows import WORKFLOWS
from tenant_api.authentication import JwksKeys, TokenVerifier
from tenant_api.headers import TENANT_ID_HEADER
from tenant_api.operations import MAX_WAITS
from tenant_api.pagination import PageTokens
from tenant_api.server import MAX_CONCURRENT_RPCS, RunningApi, start_api
from tenantry import fleet_rollout
from tenantry.db import admission
from tenantry.db.engine import create_engine, driver_of
from tenantry.db.shards import Shards
from tenantry.migrations import migrations_dir, tenant_schema_script_at
from tenantry.schema_names import quote_schema, schema_name_for
from tenantry.settings import DEFAULT_SHARD, AuthSettings, MigrateTenantsSettings, TemporalTlsSettings
from tenantry.v1 import (
    operation_pb2,
    operation_service_pb2,
    operation_service_pb2_grpc,
    project_service_pb2_grpc,
    tenant_pb2,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from tenantry.workflow_contract import ProvisionTenantInput
from tenantry_dev.embedded import BIN_DIR, ChildProcess, DatabaseUrls, free_port, spawn_child, wait_grpc_serving
from tenantry_dev.tokens import (
    ADMIN_SCOPE,
    DEV_AUDIENCE,
    DEV_ISSUER,
    channel_with_token,
    ensure_signing_key,
    mint_token,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Workflow histories every later change must replay (test_provisioning replays them all).
HISTORIES_DIR = Path(__file__).resolve().parent / "histories"
BUG_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


# --- who calls: every test call carries a token signed by a key made for this run ----

_AUTH_DIR = Path(tempfile.mkdtemp(prefix="tenantry-test-auth-"))
TEST_KEY = ensure_signing_key(_AUTH_DIR)
assert TEST_KEY.jwks_file is not None
TEST_AUTH = AuthSettings(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, jwks_file=TEST_KEY.jwks_file, jwks_url=None)
TEST_SUBJECT = "test-admin"


def token(
    scope: str = ADMIN_SCOPE,
    *,
    tenant_id: str | None = None,
    subject: str = TEST_SUBJECT,
    ttl: timedelta = timedelta(hours=6),
) -> str:
    """A bearer token for the APIs these tests start."""
    return mint_token(TEST_KEY, scope=scope, tenant_id=tenant_id, subject=subject, ttl=ttl)


ADMIN_TOKEN = token()


def verifier_for_tests() -> TokenVerifier:
    return TokenVerifier(TEST_AUTH, JwksKeys.from_settings(TEST_AUTH))


# The page token key of every API these tests start (in-process or not).
TEST_PAGE_TOKEN_KEY = secrets.token_bytes(32)


def page_tokens_for_tests(**kwargs: Any) -> PageTokens:
    """The page token signer of the APIs these tests start; `kwargs` (key,
    lifetime, clock) make one that differs."""
    return PageTokens(kwargs.pop("key", TEST_PAGE_TOKEN_KEY), **kwargs)


def auth_env() -> dict[str, str]:
    """What a tenant-api process needs to verify these tests' tokens (and sign
    page tokens the in-process APIs accept too)."""
    return {
        "TENANTRY_AUTH_ISSUER": TEST_AUTH.issuer,
        "TENANTRY_AUTH_JWKS_FILE": str(TEST_AUTH.jwks_file),
        "TENANTRY_PAGE_TOKEN_KEY": TEST_PAGE_TOKEN_KEY.hex(),
    }


def api_channel(target: str, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> grpc.aio.Channel:
    """A plaintext channel to a test API whose calls carry `token` (None: no token)."""
    if token is None:
        return grpc.aio.insecure_channel(target, **kwargs)
    return channel_with_token(target, token, **kwargs)


# --- the API in-process, on a task queue of its own ----------------------------------


@dataclass
class Stubs:
    tenants: tenant_service_pb2_grpc.TenantServiceAsyncStub
    operations: operation_service_pb2_grpc.OperationServiceAsyncStub
    projects: project_service_pb2_grpc.ProjectServiceAsyncStub


def stubs_for(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(
        tenants=tenant_service_pb2_grpc.TenantServiceStub(channel),
        operations=operation_service_pb2_grpc.OperationServiceStub(channel),
        projects=project_service_pb2_grpc.ProjectServiceStub(channel),
    )


Metadata = tuple[tuple[str, str], ...]


def by_id(tenant_id: str) -> Metadata:
    """The call metadata that routes a tenant-scoped RPC to `tenant_id`."""
    return ((TENANT_ID_HEADER, tenant_id),)


@dataclass
class Stack:
    api: RunningApi
    channel: grpc.aio.Channel
    stubs: Stubs
    task_queue: str


@asynccontextmanager
async def running_stack(
    *,
    engine: AsyncEngine,
    client: Client,
    task_queue: str | None = None,
    activities: list[Callable[..., Any]] | None = None,
    with_worker: bool = True,
    page_tokens: PageTokens | None = None,
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
    max_waits: int = MAX_WAITS,
    deletion_retention: timedelta = timedelta(days=7),
    worker_engine: AsyncEngine | None = None,
    shards: Shards | None = None,
    worker_shards: Shards | None = None,
) -> AsyncIterator[Stack]:
    """API in-process on port 0 plus (optionally) a worker, on their own task
    queue. `engine`: the API's (and the worker's unless `worker_engine`).
    `page_tokens`: default page_tokens_for_tests(); the caps are start_api's
    (tests lower them). `deletion_retention`: a deleted ACTIVE or SUSPENDED
    tenant's data is kept this long (tests that want it gone call
    PurgeTenant: see delete_and_purge). `shards` / `worker_shards`: the API's /
    the worker's TENANTRY_SHARDS (None: the one default shard on its engine's
    database); the caller disposes of them."""
    queue = task_queue or f"test-{uuid.uuid4().hex[:12]}"
    api = await start_api(
        engine=engine,
        client=client,
        task_queue=queue,
        address="127.0.0.1:0",
        verifier=verifier_for_tests(),
        page_tokens=page_tokens or page_tokens_for_tests(),
        max_concurrent_rpcs=max_concurrent_rpcs,
        max_waits=max_waits,
        deletion_retention=deletion_retention,
        shards=shards,
    )
    channel = api_channel(f"127.0.0.1:{api.port}")
    try:
        if with_worker:
            worker: Worker = build_worker(
                client, worker_engine or engine, queue, activities=activities, shards=worker_shards
            )
            async with worker:
                yield Stack(api, channel, stubs_for(channel), queue)
        else:
            yield Stack(api, channel, stubs_for(channel), queue)
    finally:
        await channel.close(None)
        await api.stop(0)


# --- errors as the API returns them --------------------------------------------------


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo every error must carry (fails the test if it is missing)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "tenantry.v1"
            return info
    raise AssertionError(f"no ErrorInfo on {error.code()}: {error.details()}")


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    return {}


# --- tenants, operations and schemas -------------------------------------------------


def registration(slug: str | None = None, **overrides: Any) -> tenant_service_pb2.RegisterTenantRequest:
    """A valid RegisterTenantRequest; `overrides` replace or add fields (`labels` a mapping)."""
    slug = slug or f"t-{uuid.uuid4().hex[:12]}"
    fields: dict[str, Any] = {
        "slug": slug,
        "display_name": f"Tenant {slug}",
        "admin_email": f"admin@{slug}.example.com",
        "admin_display_name": "Ada Admin",
    }
    fields.update(overrides)
    return tenant_service_pb2.RegisterTenantRequest(**fields)


async def wait_done(stubs: Stubs, name: str, timeout: float = 60.0) -> operation_pb2.Operation:
    request = operation_service_pb2.WaitOperationRequest(name=name)
    request.timeout.FromSeconds(int(timeout))
    response = await stubs.operations.WaitOperation(request, timeout=timeout + 5)
    assert response.operation.done, f"{name} not done after {timeout}s: {response.operation}"
    return response.operation


async def replay_and_record(client: Client, workflow_id: str, label: str) -> None:
    """The workflow's history replays on the current workflow code (as
    recorded and through the JSON form); with TENANTRY_WRITE_HISTORIES=1 the
    first one of `label` is committed to tests/histories."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    await Replayer(workflows=WORKFLOWS).replay_workflow(history)
    await Replayer(workflows=WORKFLOWS).replay_workflow(
        WorkflowHistory.from_json(history.workflow_id, history.to_json())
    )
    if os.environ.get("TENANTRY_WRITE_HISTORIES") == "1" and not any(HISTORIES_DIR.glob(f"{label}__*.json")):
        (HISTORIES_DIR / f"{label}__{history.workflow_id}.json").write_text(history.to_json() + "\n")


async def eventually(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Polls an async predicate until it returns a truthy value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def delete_and_purge(stubs: Stubs, tenant_id: str) -> operation_pb2.Operation:
    """DeleteTenant, then PurgeTenant (an ACTIVE tenant's data would otherwise
    be kept for the retention); returns the deletion operation once done."""
    deleted = await stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant_id), timeout=30)
    try:
        await stubs.tenants.PurgeTenant(tenant_service_pb2.PurgeTenantRequest(tenant_id=tenant_id), timeout=30)
    except grpc.aio.AioRpcError as error:
        # Purged at once already (a CREATING or FAILED tenant): nothing to bring forward.
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        assert error_info(error).reason == "TENANT_DELETED"
    return await asyncio.wait_for(wait_done(stubs, deleted.operation.name), 70)


async def register_active(stubs: Stubs) -> tenant_pb2.Tenant:
    """A tenant registered through `stubs` and provisioned: ACTIVE, as GetTenant reads it."""
    response = await stubs.tenants.RegisterTenant(registration(), timeout=30)
    operation = await asyncio.wait_for(wait_done(stubs, response.operation.name), 70)
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
    request = tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id)
    tenant = (await stubs.tenants.GetTenant(request, timeout=10)).tenant
    assert tenant.state == tenant_pb2.TENANT_STATE_ACTIVE, tenant
    return tenant


async def schema_exists(engine: AsyncEngine, schema_name: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = :s"), {"s": schema_name})
        return found.first() is not None


def run_migrate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`tenantry-migrate *args` with `env` (TENANTRY_DATABASE_URL, ...), as an operator runs it."""
    env = {"PATH": f"{BIN_DIR}:{os.environ.get('PATH', '')}", **env}
    return subprocess.run(
        [str(BIN_DIR / "tenantry-migrate"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def shards_with_default(control_plane: AsyncEngine, control_url: str, **remote: str) -> Shards:
    """A process's TENANTRY_SHARDS: `default` on the control plane's database
    (`control_url`, with the process's own role) plus `remote` (name -> URL)."""
    return Shards(control_plane, {"default": control_url, **remote}, create_engine, control_plane_url=control_url)


async def project_names_in(engine: AsyncEngine, schema: str) -> list[str]:
    """The names in a tenant schema's projects table, read directly (sorted)."""
    async with engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT name FROM {quote_schema(schema)}.projects ORDER BY name"))
        return list(rows.scalars())


async def change_tenant_by_hand(
    control_plane: AsyncEngine, tenant_id: uuid.UUID, assignments: str, fencing: AsyncEngine | None = None
) -> None:
    """`UPDATE tenants SET <assignments>` for one tenant, with its version
    bumped, as the product's changes do. `fencing`: the shard database whose
    admission the change takes away (a suspend, a switch away from it), fenced
    first as the product does (tenantry.db.admission); a shard's admission
    row would admit the tenant otherwise."""
    async with control_plane.begin() as conn:
        version = await conn.scalar(text("SELECT version FROM tenants WHERE id = :id FOR UPDATE"), {"id": tenant_id})
        if fencing is not None:
            async with fencing.begin() as shard:
                await shard.execute(text(admission.fence(tenant_id, version + 1)))
        await conn.execute(
            text(f"UPDATE tenants SET {assignments}, version = version + 1 WHERE id = :id"), {"id": tenant_id}
        )


async def unreachable_temporal_client() -> Client:
    """A real Temporal client pointed at a port nothing listens on."""
    return await Client.connect(f"127.0.0.1:{free_port()}", lazy=True)


@asynccontextmanager
async def stack_without_temporal(
    engine: AsyncEngine, *, max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS, max_waits: int = MAX_WAITS
) -> AsyncIterator[Stack]:
    """An API whose real Temporal client points at a closed port: operations
    stay PENDING. The caps: as for running_stack."""
    client = await unreachable_temporal_client()
    async with running_stack(
        engine=engine, client=client, with_worker=False, max_concurrent_rpcs=max_concurrent_rpcs, max_waits=max_waits
    ) as stack:
        yield stack


# --- the contract and its page tokens ------------------------------------------------


def contract_services() -> dict[str, list[str]]:
    """Every service of the tenantry.v1 contract and its methods, read from the
    compiled descriptors (every *_pb2 module of the package), never hand-kept."""
    services: dict[str, list[str]] = {}
    for module_info in pkgutil.iter_modules(tenantry_v1.__path__):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(f"{tenantry_v1.__name__}.{module_info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                services[service.full_name] = sorted(method.name for method in service.methods)
    return services


async def all_tenant_pages(
    stack: Stack, page_size: int, show_deleted: bool = False
) -> tuple[list[list[tenant_pb2.Tenant]], list[str]]:
    """Every ListTenants page from the first, and the tokens between them."""
    pages: list[list[tenant_pb2.Tenant]] = []
    tokens: list[str] = []
    token = ""
    for _ in range(5_000):
        response = await stack.stubs.tenants.ListTenants(
            tenant_service_pb2.ListTenantsRequest(page_size=page_size, page_token=token, show_deleted=show_deleted),
            timeout=30,
        )
        pages.append(list(response.tenants))
        token = response.next_page_token
        if not token:
            return pages, tokens
        tokens.append(token)
    raise AssertionError("pagination did not terminate")


async def count_tenants(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM tenants"))).scalar_one())


def forged_page_token(position: str, key: str, query: str) -> str:
    """A page token pointing anywhere (`position` in ISO 8601), signed with the
    tests' key: what only a holder of the key (or a bug of ours) could make.
    Even that must never break the server."""
    return page_tokens_for_tests().encode(datetime.fromisoformat(position), key, query)


def unsigned_page_token(position: str, key: str, query: str) -> str:
    """A well-formed page token as it was before tokens were signed, and as a
    client can forge one: always refused now."""
    raw = json.dumps({"p": position, "k": key, "q": query}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


EXTREME_POSITIONS = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59.999999-14:00",
    "9999-12-31T23:59:59.999999+00:00",
    "2024-01-01T00:00:00+00:00",
]


# --- expected errors -----------------------------------------------------------------


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call must fail with; never a bug-class code."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() not in BUG_CODES, f"{error.code()}: {error.details()}"
    return error


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    error = await rpc_error(call)
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    assert error_info(error).reason == reason
    return error


async def expect_invalid_field(call: Awaitable[Any], *fields: str) -> grpc.aio.AioRpcError:
    """INVALID_ARGUMENT INVALID_FIELD naming exactly `fields` in its BadRequest."""
    error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert set(field_violations(error)) == set(fields), field_violations(error)
    return error


@asynccontextmanager
async def failing_provisioning_stack(*, engine: AsyncEngine, client: Client, message: str) -> AsyncIterator[Stack]:
    """A stack whose provisioning step fails for good with `message`: every
    tenant registered through it ends FAILED."""

    @activity.defn(name="provision_tenant")
    async def provision_tenant(input: ProvisionTenantInput) -> None:
        raise ApplicationError(message, type="InjectedFailure", non_retryable=True)

    queue = f"test-fail-{uuid.uuid4().hex[:12]}"
    activities = [
        provision_tenant if getattr(a, "__name__", "") == "provision_tenant" else a
        for a in activities_for(engine, client, queue)
    ]
    assert provision_tenant in activities
    async with running_stack(engine=engine, client=client, task_queue=queue, activities=activities) as stack:
        yield stack


# --- tenant-api / provisioner-worker as OS processes --------------------------------


class ServiceProcess(ChildProcess):
    @property
    def identity(self) -> str:
        """The identity this process reports to Temporal, if it runs a worker."""
        return worker_identity(self.pid)


def service_env(database_url: str, temporal_address: str, task_queue: str, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{BIN_DIR}:{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "TENANTRY_DATABASE_URL": database_url,
        "TENANTRY_TEMPORAL_ADDRESS": temporal_address,
        "TENANTRY_TASK_QUEUE": task_queue,
        "TENANTRY_METRICS_ADDRESS": "off",
        "TENANTRY_SDK_METRICS_ADDRESS": "off",
        **auth_env(),
    }
    env.update(extra)
    return env


def spawn_command(name: str, argv: list[str], env: dict[str, str], log_dir: Path | None = None) -> ServiceProcess:
    """`argv` as a child in a session of its own, its output in `<log_dir>/<name>.log`."""
    directory = log_dir or Path(tempfile.mkdtemp(prefix="tenantry-proc-"))
    child = spawn_child(name, argv, env, directory / f"{name}.log")
    return ServiceProcess(child.name, child.process, child.log_path)


def spawn(name: str, module: str, env: dict[str, str], log_dir: Path | None = None) -> ServiceProcess:
    return spawn_command(name, [sys.executable, "-m", module], env, log_dir)


def spawn_api(env: dict[str, str], log_dir: Path | None = None, name: str = "api") -> ServiceProcess:
    address = f"127.0.0.1:{free_port()}"
    service = spawn(name, "tenant_api", {**env, "TENANTRY_GRPC_ADDRESS": address}, log_dir)
    service.address = address
    return service


async def wait_serving(service: ServiceProcess, timeout: float = 30) -> None:
    await wait_grpc_serving(service.address, service.name, timeout, service.check_alive)


@contextlib.contextmanager
def stopping(*services: ServiceProcess) -> Iterator[None]:
    """Kills whatever is still running when the block exits, pass or fail."""
    try:
        yield
    finally:
        for service in services:
            service.kill_group()
            service.process.wait(10)


# --- what Temporal recorded of the provisioning step -------------------------------


@dataclass(frozen=True)
class SchemaStep:
    """The provision_tenant activity as the workflow history records it: Temporal
    writes one started event, the last attempt's, when the activity closes."""

    attempt: int
    started_by: str
    completed_by: str


async def schema_step(client: Client, workflow_id: str) -> SchemaStep:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    scheduled = [
        event.event_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name == "provision_tenant"
    ]
    assert len(scheduled) == 1, (workflow_id, scheduled)
    started = [
        event
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and event.activity_task_started_event_attributes.scheduled_event_id == scheduled[0]
    ]
    completed = [
        event
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and event.activity_task_completed_event_attributes.scheduled_event_id == scheduled[0]
    ]
    assert len(started) == 1 and len(completed) == 1, (workflow_id, started, completed)
    return SchemaStep(
        attempt=started[0].activity_task_started_event_attributes.attempt,
        started_by=started[0].activity_task_started_event_attributes.identity,
        completed_by=completed[0].activity_task_completed_event_attributes.identity,
    )


async def pending_schema_step(client: Client, workflow_id: str) -> tuple[int, str] | None:
    """(attempt, worker identity) of the running provision_tenant activity, if any."""
    description = await client.get_workflow_handle(workflow_id).describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == "provision_tenant":
            return pending.attempt, pending.last_worker_identity
    return None


def worker_identity(pid: int) -> str:
    """The identity a worker process reports to Temporal (the SDK's default)."""
    return f"{pid}@{socket.gethostname()}"


# --- fleets of tenant schemas at an older revision (fleet rollouts) ------------------


async def fleet_at(
    worker_engine: AsyncEngine,
    count: int,
    revision: str,
    *,
    chunk: int = 50,
    shard: str = DEFAULT_SHARD,
    shard_engine: AsyncEngine | None = None,
) -> list[uuid.UUID]:
    """`count` ACTIVE tenants whose schemas are at `revision`, built as that
    revision's lineage renders them (tenantry.migrations.tenant_schema_script_at)
    by the worker's role, which owns tenant schemas; ids in ascending order.
    Registered by rows, not through the API: a rollout only reads the rows and
    the schemas. `shard_engine`: the worker's role on another database (the
    shard `shard`): the schemas go there, committed before the rows (as the
    two-database protocol orders them); None: with the rows, on
    `worker_engine`'s database."""
    ids = sorted(uuid.uuid4() for _ in range(count))
    user_id = uuid.uuid4()
    async with worker_engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (id, email, display_name) VALUES (:id, :email, 'Fleet admin')"),
            {"id": user_id, "email": f"fleet-{user_id.hex}@example.com"},
        )
    for start in range(0, count, chunk):
        part = ids[start : start + chunk]
        script = "\n".join(tenant_schema_script_at(schema_name_for(t), revision) for t in part)
        if shard_engine is not None:
            async with shard_engine.begin() as shard_conn:
                await (await driver_of(shard_conn)).execute(script)
        async with worker_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name, schema_version, "
                    "shard) VALUES (:id, :slug, 'Fleet tenant', :user_id, 'ACTIVE', :schema, :revision, :shard)"
                ),
                [
                    {
                        "id": tenant_id,
                        "slug": f"fleet-{tenant_id.hex[:20]}",
                        "user_id": user_id,
                        "schema": schema_name_for(tenant_id),
                        "revision": revision,
                        "shard": shard,
                    }
                    for tenant_id in part
                ],
            )
            if shard_engine is None:
                await (await driver_of(conn)).execute(script)
    return ids


async def retire_fleet(
    worker_engine: AsyncEngine, ids: list[uuid.UUID], *, shard_engine: AsyncEngine | None = None
) -> None:
    """The fleet's schemas dropped (on `shard_engine`'s database when given)
    and its tenants DELETED, so later tests see none of it."""
    for start in range(0, len(ids), 50):  # a transaction's locks are bounded (max_locks_per_transaction)
        part = ids[start : start + 50]
        async with (shard_engine or worker_engine).begin() as conn:
            for tenant_id in part:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema_name_for(tenant_id)}" CASCADE'))
        async with worker_engine.begin() as conn:
            await conn.execute(text("UPDATE tenants SET state = 'DELETED' WHERE id = ANY(:ids)"), {"ids": part})


# --- fleet rollouts ----------------------------------------------------------------------


def settings_for(database_urls: DatabaseUrls, client: Client, task_queue: str) -> MigrateTenantsSettings:
    return MigrateTenantsSettings(
        database_url=database_urls.migrator,
        migrations_dir=migrations_dir(),
        temporal_address=client.service_client.config.target_host,
        temporal_namespace=client.namespace,
        task_queue=task_queue,
        temporal_tls=TemporalTlsSettings(),
    )


async def migrate_tenants(settings: MigrateTenantsSettings, *argv: str) -> tuple[int, str, str]:
    """`tenantry-migrate tenants ARGV` as its main runs it, output not a TTY."""
    out, err = io.StringIO(), io.StringIO()
    code = await fleet_rollout.run(fleet_rollout.parser().parse_args(list(argv)), settings, out, err)
    return code, out.getvalue(), err.getvalue()


async def migrated_events(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT tenant_id, count(*) FROM tenant_events WHERE type = 'SCHEMA_MIGRATED' "
                "AND tenant_id = ANY(:ids) GROUP BY tenant_id"
            ),
            {"ids": ids},
        )
        return {tenant_id: count for tenant_id, count in rows}

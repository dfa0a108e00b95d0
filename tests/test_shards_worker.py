"""The worker on shards (issue 15): provisioning, deletion, purge and the
reconciler on the tenant's own shard, against two real PostgreSQL servers (the
control plane's and `shard_b_urls`) and a real Temporal.

Crashes between the shard's commit and the control plane's are forced, not
hoped for: a deferred constraint trigger on the control plane's `tenants` row
fails that transaction's COMMIT once, after the shard's transaction has
committed (exactly where a killed worker would have stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from provisioner_worker.activities import TENANT_NOT_PROVISIONABLE, TenantActivities, TenantActivityInput
from provisioner_worker.reconciler import ReconcilerActivities, ReconcileReport
from provisioner_worker.rollout import BatchInput, Outcome, RolloutActivities
from tenantry.db.connection_budget import read_budget
from tenantry.db.engine import asyncpg_dsn, create_engine, driver_of
from tenantry.db.shards import Shards
from tenantry.db_roles import ROLES
from tenantry.migrations import tenant_head_revision, tenant_schema_script
from tenantry.operation_starter import OperationStarter
from tenantry.pg_errors import pg_error
from tenantry.schema_names import quote_schema, schema_name_for
from tenantry.states import OperationKind
from tenantry.v1 import operation_pb2, project_service_pb2, tenant_pb2, tenant_service_pb2
from tenantry.workflow_contract import (
    MOVE_WORKFLOW,
    MigrateFleetInput,
    ProvisionTenantInput,
    ReconcileInput,
    provision_workflow_id,
)
from tenantry_dev.embedded import DatabaseUrls, free_port, role_url, start_embedded_postgres
from tests.stack import (
    Stack,
    by_id,
    delete_and_purge,
    fleet_at,
    migrate_tenants,
    migrated_events,
    project_names_in,
    registration,
    retire_fleet,
    run_migrate,
    running_stack,
    schema_exists,
    service_env,
    settings_for,
    shards_with_default,
    spawn,
    stopping,
    wait_done,
)

# Leaves other tests' PENDING operations alone.
_NO_PENDING = ReconcileInput(pending_threshold_seconds=6 * 3600)


# --- fixtures -----------------------------------------------------------------------------------


@dataclasses.dataclass
class TwoShards:
    b_admin: AsyncEngine  # shard b's superuser: catalogs, planting and dropping by hand
    api: Shards
    worker: Shards
    stack: Stack  # API and worker with `default` and `b`
    idle: Stack  # the same API, no worker: the test runs the activities itself


@pytest.fixture(scope="module")
async def two_shards(
    database_urls: DatabaseUrls,
    shard_b_urls: DatabaseUrls,
    api_engine: AsyncEngine,
    worker_engine: AsyncEngine,
    temporal_client: Client,
    b_admin: AsyncEngine,
) -> AsyncIterator[TwoShards]:
    api_shards = shards_with_default(api_engine, database_urls.api, b=shard_b_urls.api)
    worker_shards = shards_with_default(worker_engine, database_urls.worker, b=shard_b_urls.worker)
    try:
        async with (
            running_stack(
                engine=api_engine,
                worker_engine=worker_engine,
                client=temporal_client,
                shards=api_shards,
                worker_shards=worker_shards,
            ) as stack,
            running_stack(engine=api_engine, client=temporal_client, with_worker=False, shards=api_shards) as idle,
        ):
            try:
                yield TwoShards(b_admin, api_shards, worker_shards, stack, idle)
            finally:
                # The idle API's workflows never ran: nothing of them stays in Temporal.
                async for execution in temporal_client.list_workflows(f"TaskQueue = '{idle.task_queue}'"):
                    if execution.status is not None and execution.status.name == "RUNNING":
                        with contextlib.suppress(RPCError):
                            await temporal_client.get_workflow_handle(execution.id).terminate("test cleanup")
    finally:
        await api_shards.dispose()
        await worker_shards.dispose()


# --- helpers ------------------------------------------------------------------------------------


def as_step(workflow_id: str) -> ActivityEnvironment:
    """Runs an activity as the workflow `workflow_id` would (activities take
    their operation from the calling workflow's id)."""
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(environment.info, workflow_id=workflow_id)
    return environment


async def register_on_b(stubs_stack: Stack) -> tuple[tenant_pb2.Tenant, str]:
    response = await stubs_stack.stubs.tenants.RegisterTenant(registration(shard="b"), timeout=30)
    assert response.tenant.shard == "b"
    return response.tenant, response.operation.name


async def active_on_b(two: TwoShards) -> tenant_pb2.Tenant:
    tenant, operation = await register_on_b(two.stack)
    done = await asyncio.wait_for(wait_done(two.stack.stubs, operation), 70)
    assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED, done
    got = await two.stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=tenant.id), timeout=10)
    assert (got.tenant.state, got.tenant.shard) == (tenant_pb2.TENANT_STATE_ACTIVE, "b")
    return got.tenant


async def tenant_row(engine: AsyncEngine, tenant_id: str) -> tuple[str, str]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT state, shard FROM tenants WHERE id = :t"), {"t": uuid.UUID(tenant_id)})
        ).one()
    return row.state, row.shard


async def operation_state(engine: AsyncEngine, workflow_id: str) -> str:
    async with engine.connect() as conn:
        state: str = (
            await conn.execute(text("SELECT state FROM workflow_executions WHERE workflow_id = :w"), {"w": workflow_id})
        ).scalar_one()
    return state


async def event_count(engine: AsyncEngine, tenant_id: str, type: str) -> int:
    async with engine.connect() as conn:
        count: int = (
            await conn.execute(
                text("SELECT count(*) FROM tenant_events WHERE tenant_id = :t AND type = :y"),
                {"t": uuid.UUID(tenant_id), "y": type},
            )
        ).scalar_one()
    return count


async def stamp_on(engine: AsyncEngine, schema: str) -> str | None:
    async with engine.connect() as conn:
        if not await schema_exists(engine, schema):
            return None
        stamp: str = (
            await conn.execute(text(f"SELECT version_num FROM {quote_schema(schema)}.alembic_version"))
        ).scalar_one()
    return stamp


@contextlib.asynccontextmanager
async def control_plane_commit_fails_once(
    engine: AsyncEngine, tenant_id: str | None = None, *, slug: str | None = None
) -> AsyncIterator[None]:
    """The next control-plane transaction that updates the tenant's row (by
    id, or by slug for a tenant not registered yet) fails at its COMMIT (a
    deferred constraint trigger; a sequence, which no rollback undoes, lets it
    fire once). Everything a step did on another database before that commit
    stays committed."""
    suffix = uuid.uuid4().hex
    if tenant_id is not None:
        condition = f"NEW.id = '{uuid.UUID(tenant_id)}'"
    else:
        assert slug is not None and slug.replace("-", "").isalnum()
        condition = f"NEW.slug = '{slug}'"
    sequence, function, trigger = f"shard_fault_{suffix}", f"shard_fault_{suffix}_fn", f"shard_fault_{suffix}_tr"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE SEQUENCE {sequence}"))
        await conn.execute(
            text(
                f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN "
                f"IF nextval('{sequence}') = 1 THEN RAISE EXCEPTION 'injected: control-plane commit lost'; END IF; "
                "RETURN NULL; END $$"
            )
        )
        await conn.execute(
            text(
                f"CREATE CONSTRAINT TRIGGER {trigger} AFTER UPDATE ON tenants DEFERRABLE INITIALLY DEFERRED "
                f"FOR EACH ROW WHEN ({condition}) EXECUTE FUNCTION {function}()"
            )
        )
    try:
        yield
        async with engine.connect() as conn:
            fired = await conn.scalar(text(f"SELECT is_called FROM {sequence}"))
        assert fired, "the injected fault never fired"
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger} ON tenants"))
            await conn.execute(text(f"DROP FUNCTION IF EXISTS {function}()"))
            await conn.execute(text(f"DROP SEQUENCE IF EXISTS {sequence}"))


def is_injected(error: BaseException) -> bool:
    return isinstance(error, DBAPIError) and "injected: control-plane commit lost" in str(error)


# --- provisioning, projects, deletion and purge on shard b --------------------------------------


async def test_a_tenant_placed_on_b_has_its_schema_and_data_on_b_until_purged(
    two_shards: TwoShards, engine: AsyncEngine
) -> None:
    two = two_shards
    tenant = await active_on_b(two)
    assert await stamp_on(two.b_admin, tenant.schema_name) == tenant_head_revision()
    assert not await schema_exists(engine, tenant.schema_name)

    created = await two.stack.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="Apollo"), metadata=by_id(tenant.id), timeout=10
    )
    assert created.project.name == "Apollo"
    assert await project_names_in(two.b_admin, tenant.schema_name) == ["Apollo"]

    deletion = await delete_and_purge(two.stack.stubs, tenant.id)
    assert deletion.state == operation_pb2.OPERATION_STATE_SUCCEEDED, deletion
    assert await tenant_row(engine, tenant.id) == ("DELETED", "b")
    assert not await schema_exists(two.b_admin, tenant.schema_name)
    assert not await schema_exists(engine, tenant.schema_name)


async def test_undelete_on_b_keeps_the_tenants_data(two_shards: TwoShards) -> None:
    two = two_shards
    tenant = await active_on_b(two)
    metadata = by_id(tenant.id)
    await two.stack.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="Kept"), metadata=metadata, timeout=10
    )
    await two.stack.stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id), timeout=30)
    undeleted = await two.stack.stubs.tenants.UndeleteTenant(
        tenant_service_pb2.UndeleteTenantRequest(tenant_id=tenant.id), timeout=30
    )
    assert undeleted.tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
    listed = await two.stack.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=metadata, timeout=10
    )
    assert [p.name for p in listed.projects] == ["Kept"]
    assert await project_names_in(two.b_admin, tenant.schema_name) == ["Kept"]
    await delete_and_purge(two.stack.stubs, tenant.id)
    assert not await schema_exists(two.b_admin, tenant.schema_name)


async def test_lost_control_plane_commits_on_b_are_finished_by_the_retry_and_a_late_step_creates_nothing(
    two_shards: TwoShards, engine: AsyncEngine, worker_engine: AsyncEngine, temporal_client: Client
) -> None:
    """Provisioning and purge each crash between the shard's commit and the
    control plane's; the retry finds its shard work done and finishes. A
    provisioning step arriving after the purge creates nothing on b."""
    two = two_shards
    steps = TenantActivities(worker_engine, temporal_client, two.worker)
    tenant, _ = await register_on_b(two.idle)
    schema = tenant.schema_name
    async with engine.connect() as conn:
        provisioning = ProvisionTenantInput(
            tenant_id=tenant.id,
            admin_user_id=str(
                await conn.scalar(text("SELECT admin_user_id FROM tenants WHERE id = :t"), {"t": uuid.UUID(tenant.id)})
            ),
        )
    provision_id = provision_workflow_id(uuid.UUID(tenant.id))

    # Provisioning: the schema commits on b, the control plane's commit is lost.
    async with control_plane_commit_fails_once(engine, tenant.id):
        with pytest.raises(DBAPIError) as crashed:
            await as_step(provision_id).run(steps.provision_tenant, provisioning)
        assert is_injected(crashed.value), crashed.value
        assert await stamp_on(two.b_admin, schema) == tenant_head_revision()
        assert await tenant_row(engine, tenant.id) == ("CREATING", "b")
        assert await operation_state(engine, provision_id) == "RUNNING"
        # The retry: the schema is there at its stamp; only the control plane is left.
        await as_step(provision_id).run(steps.provision_tenant, provisioning)
    assert await tenant_row(engine, tenant.id) == ("ACTIVE", "b")
    assert await operation_state(engine, provision_id) == "SUCCEEDED"
    assert await event_count(engine, tenant.id, "ACTIVATED") == 1
    assert await stamp_on(two.b_admin, schema) == tenant_head_revision()
    assert not await schema_exists(engine, schema)
    async with two.b_admin.connect() as conn:
        tables = await conn.scalar(
            text("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = :s AND tablename = 'projects'"),
            {"s": schema},
        )
    assert tables == 1
    # The data path works on what the retry left.
    await two.idle.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="After the crash"), metadata=by_id(tenant.id), timeout=10
    )
    assert await project_names_in(two.b_admin, schema) == ["After the crash"]

    # Purge: the drop commits on b, the control plane's commit is lost.
    deleted = await two.idle.stubs.tenants.DeleteTenant(
        tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant.id), timeout=30
    )
    await two.idle.stubs.tenants.PurgeTenant(tenant_service_pb2.PurgeTenantRequest(tenant_id=tenant.id), timeout=30)
    delete_id = deleted.operation.name.removeprefix("operations/")
    purge = TenantActivityInput(tenant_id=tenant.id)
    async with control_plane_commit_fails_once(engine, tenant.id):
        with pytest.raises(DBAPIError) as crashed:
            await as_step(delete_id).run(steps.purge_when_due, purge)
        assert is_injected(crashed.value), crashed.value
        assert not await schema_exists(two.b_admin, schema)
        assert await tenant_row(engine, tenant.id) == ("DELETING", "b")
        # An undelete cannot bring back a tenant whose data is gone: its purge is due.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await two.idle.stubs.tenants.UndeleteTenant(
                tenant_service_pb2.UndeleteTenantRequest(tenant_id=tenant.id), timeout=30
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
        outcome = await as_step(delete_id).run(steps.purge_when_due, purge)
    assert (outcome.done, outcome.purged) == (True, True)
    assert await tenant_row(engine, tenant.id) == ("DELETED", "b")
    assert await operation_state(engine, delete_id) == "SUCCEEDED"
    assert await event_count(engine, tenant.id, "PURGED") == 1

    # A provisioning step arriving late (a retry scheduled before the delete).
    with pytest.raises(ApplicationError) as late:
        await as_step(provision_id).run(steps.provision_tenant, provisioning)
    assert late.value.type == TENANT_NOT_PROVISIONABLE
    assert not await schema_exists(two.b_admin, schema)
    assert not await schema_exists(engine, schema)


async def test_the_worker_retries_a_provisioning_whose_control_plane_commit_was_lost(
    two_shards: TwoShards, engine: AsyncEngine, temporal_client: Client
) -> None:
    """End to end through Temporal: the activity's first attempt commits the
    schema on b and loses the control plane's commit; the worker's retry
    finishes it."""
    two = two_shards
    slug = f"t-{uuid.uuid4().hex[:12]}"
    async with control_plane_commit_fails_once(engine, slug=slug):
        response = await two.stack.stubs.tenants.RegisterTenant(registration(slug, shard="b"), timeout=30)
        done = await asyncio.wait_for(wait_done(two.stack.stubs, response.operation.name), 70)
    assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED, done
    tenant = response.tenant
    assert await tenant_row(engine, tenant.id) == ("ACTIVE", "b")
    assert await event_count(engine, tenant.id, "ACTIVATED") == 1
    assert await stamp_on(two.b_admin, tenant.schema_name) == tenant_head_revision()
    assert not await schema_exists(engine, tenant.schema_name)
    history = await temporal_client.get_workflow_handle(done.name.removeprefix("operations/")).fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert attempts == [2], attempts  # the first attempt failed at the injected commit, the second finished
    await delete_and_purge(two.stack.stubs, tenant.id)
    assert not await schema_exists(two.b_admin, tenant.schema_name)


async def test_failed_provisioning_on_b_drops_the_schema_on_b(
    two_shards: TwoShards, engine: AsyncEngine, worker_engine: AsyncEngine, temporal_client: Client
) -> None:
    """Compensation after the schema was committed on b (a later step failed
    for good): the drop happens on b, even when its control-plane commit is
    lost once."""
    from provisioner_worker.activities import FailProvisioningInput

    two = two_shards
    steps = TenantActivities(worker_engine, temporal_client, two.worker)
    tenant, _ = await register_on_b(two.idle)
    schema = tenant.schema_name
    provision_id = provision_workflow_id(uuid.UUID(tenant.id))
    # The schema exists on b, the tenant is still CREATING (a lost commit, as above).
    async with two.b_admin.begin() as conn:
        await conn.execute(text("SET LOCAL ROLE tenantry_worker"))
        await (await driver_of(conn)).execute(tenant_schema_script(schema))
    failing = FailProvisioningInput(tenant_id=tenant.id, error_message="test", reason="PROVISIONING_FAILED")
    async with control_plane_commit_fails_once(engine, tenant.id):
        with pytest.raises(DBAPIError) as crashed:
            await as_step(provision_id).run(steps.fail_provisioning, failing)
        assert is_injected(crashed.value), crashed.value
        assert not await schema_exists(two.b_admin, schema)
        assert await tenant_row(engine, tenant.id) == ("CREATING", "b")
        await as_step(provision_id).run(steps.fail_provisioning, failing)
    assert await tenant_row(engine, tenant.id) == ("FAILED", "b")
    assert await operation_state(engine, provision_id) == "FAILED"
    assert await event_count(engine, tenant.id, "PROVISIONING_FAILED") == 1
    # Its workflow (on the idle queue) would wait for a worker to see its cancellation.
    await temporal_client.get_workflow_handle(provision_id).terminate("test cleanup")
    await delete_and_purge(two.stack.stubs, tenant.id)


# --- the reconciler per shard -------------------------------------------------------------------


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def reconcile(reconciler: ReconcilerActivities) -> ReconcileReport:
    report: ReconcileReport = await ActivityEnvironment().run(reconciler.reconcile, _NO_PENDING)
    return report


async def test_reconciler_checks_each_shard_and_goes_on_when_one_is_down(
    two_shards: TwoShards,
    database_urls: DatabaseUrls,
    engine: AsyncEngine,
    worker_engine: AsyncEngine,
    temporal_client: Client,
) -> None:
    two = two_shards
    starter = OperationStarter(temporal_client, f"unused-{uuid.uuid4().hex[:8]}")
    kept = await active_on_b(two)
    lost = await active_on_b(two)
    orphan_b, orphan_default = schema_name_for(uuid.uuid4()), schema_name_for(uuid.uuid4())
    async with two.b_admin.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {quote_schema(orphan_b)}"))
        # Dropped by hand: the control plane still says ACTIVE on b.
        await conn.execute(text(f"DROP SCHEMA {quote_schema(lost.schema_name)} CASCADE"))
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {quote_schema(orphan_default)}"))
    down_url = role_url(f"postgresql+asyncpg://127.0.0.1:{free_port()}/postgres", "tenantry_worker", "unused")
    with_down = shards_with_default(worker_engine, database_urls.worker, b=database_urls_b_worker(two), down=down_url)
    try:
        report = await reconcile(ReconcilerActivities(worker_engine, temporal_client, starter, two.worker))
        assert report.shards_down == []
        assert orphan_b in report.orphan_schemas_by_shard["b"]
        assert orphan_b not in report.orphan_schemas_by_shard.get("default", [])
        assert orphan_default in report.orphan_schemas_by_shard["default"]
        assert {orphan_b, orphan_default} <= set(report.orphan_schemas)
        assert kept.schema_name not in report.orphan_schemas
        assert lost.id in report.tenants_without_schema
        assert kept.id not in report.tenants_without_schema
        assert sample("tenantry_shard_up", shard="b") == 1
        assert (sample("tenantry_tenant_schemas", condition="missing", shard="b") or 0) >= 1
        assert (sample("tenantry_tenant_schemas", condition="orphan", shard="b") or 0) >= 1

        # A worker whose shard `down` does not answer: reported, the others still reconciled.
        report = await reconcile(ReconcilerActivities(worker_engine, temporal_client, starter, with_down))
        assert report.shards_down == ["down"]
        assert sample("tenantry_shard_up", shard="down") == 0
        assert sample("tenantry_shard_up", shard="b") == 1
        assert orphan_b in report.orphan_schemas_by_shard["b"]
        assert orphan_default in report.orphan_schemas_by_shard["default"]
        assert lost.id in report.tenants_without_schema

        # A worker that knows only the default shard: b's tenants are not
        # "without a schema" on default; b is reported as not configured.
        report = await reconcile(ReconcilerActivities(worker_engine, temporal_client, starter))
        assert lost.id not in report.tenants_without_schema
        assert orphan_b not in report.orphan_schemas
        assert "b" in report.unconfigured_shards
    finally:
        await with_down.dispose()
        async with two.b_admin.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_schema(orphan_b)}"))
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_schema(orphan_default)}"))
        await delete_and_purge(two.stack.stubs, lost.id)
        await delete_and_purge(two.stack.stubs, kept.id)


def database_urls_b_worker(two: TwoShards) -> str:
    return two.worker["b"].engine.url.render_as_string(hide_password=False)


async def test_reconciler_starts_a_stale_pending_move_with_its_shards(
    two_shards: TwoShards, engine: AsyncEngine, worker_engine: AsyncEngine, temporal_client: Client
) -> None:
    """The move itself is another part's; the reconciler passes the operation's
    source and target shards to the workflow it starts (on a queue nobody
    polls here: only the start is checked)."""
    two = two_shards
    tenant = await active_on_b(two)
    workflow_id = f"test-move-{uuid.uuid4().hex}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO workflow_executions (workflow_id, tenant_id, kind, state, source_shard, target_shard, "
                "create_time, update_time) VALUES (:w, :t, 'MOVE', 'PENDING', 'b', 'default', "
                "now() - interval '1 day', now() - interval '1 day')"
            ),
            {"w": workflow_id, "t": uuid.UUID(tenant.id)},
        )
    queue = f"unused-{uuid.uuid4().hex[:8]}"
    reconciler = ReconcilerActivities(
        worker_engine, temporal_client, OperationStarter(temporal_client, queue), two.worker
    )
    handle = temporal_client.get_workflow_handle(workflow_id)
    try:
        report = await reconcile(reconciler)
        assert workflow_id in report.started
        description = await handle.describe()
        assert description.workflow_type == MOVE_WORKFLOW
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        (payload,) = started.input.payloads
        assert json.loads(payload.data) == {"tenant_id": tenant.id, "source_shard": "b", "target_shard": "default"}
    finally:
        with contextlib.suppress(RPCError):
            await handle.terminate("test cleanup")
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE workflow_executions SET state = 'CANCELLED', end_time = now() WHERE workflow_id = :w"),
                {"w": workflow_id},
            )
        await delete_and_purge(two.stack.stubs, tenant.id)


# --- tenantry-migrate on a shard ----------------------------------------------------------------


async def test_tenantry_migrate_roles_creates_the_roles_on_a_brand_new_shard_server(
    database_urls: DatabaseUrls,
) -> None:
    """A shard on a server that has never seen Tenantry (roles are per
    server, so none of ours exist there): `tenantry-migrate roles` creates
    them, able to log in and connect, and a second run changes nothing."""
    root = Path(tempfile.mkdtemp(prefix="tenantry-test-new-shard-"))
    url, server = start_embedded_postgres(root / "data")
    fresh = create_engine(url)
    query = text(
        "SELECT rolname, rolcanlogin, has_database_privilege(rolname, current_database(), 'CONNECT') "
        "FROM pg_catalog.pg_roles WHERE rolname = ANY(:roles) ORDER BY rolname"
    )
    try:
        async with fresh.connect() as conn:
            assert (await conn.execute(query, {"roles": list(ROLES)})).all() == []
        env = {
            "TENANTRY_DATABASE_URL": database_urls.admin,
            "TENANTRY_SHARDS": json.dumps({"default": database_urls.admin, "c": url}),
        }
        for _ in range(2):
            done = await asyncio.to_thread(run_migrate, env, "roles")
            assert done.returncode == 0, done.stderr
            async with fresh.connect() as conn:
                found = [tuple(row) for row in await conn.execute(query, {"roles": list(ROLES)})]
            assert found == [(role, True, True) for role in sorted(ROLES)]
    finally:
        await fresh.dispose()
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def test_tenantry_migrate_prepares_a_shard_database(
    database_urls: DatabaseUrls, shard_b_urls: DatabaseUrls, two_shards: TwoShards
) -> None:
    """`tenantry-migrate roles` then `tenantry-migrate`, with TENANTRY_SHARDS
    naming a new database on b's server: the roles reach it, the API role
    cannot run DDL there, and it has DML on a tenant schema the worker
    creates there."""
    database = f"shard_{uuid.uuid4().hex[:12]}"
    async with two_shards.b_admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{database}"'))

    def on_new(url: str) -> str:
        from sqlalchemy import make_url

        return make_url(url).set(database=database).render_as_string(hide_password=False)

    engines: list[AsyncEngine] = []
    try:
        roles = await asyncio.to_thread(
            run_migrate,
            {
                "TENANTRY_DATABASE_URL": database_urls.admin,
                "TENANTRY_SHARDS": json.dumps({"default": database_urls.admin, "b": on_new(shard_b_urls.admin)}),
            },
            "roles",
        )
        assert roles.returncode == 0, roles.stderr
        migrated = await asyncio.to_thread(
            run_migrate,
            {
                "TENANTRY_DATABASE_URL": database_urls.migrator,
                "TENANTRY_SHARDS": json.dumps({"b": on_new(shard_b_urls.migrator)}),
            },
        )
        assert migrated.returncode == 0, migrated.stderr
        api, worker = create_engine(on_new(shard_b_urls.api)), create_engine(on_new(shard_b_urls.worker))
        engines += [api, worker]

        for ddl in (
            "CREATE TABLE public.api_made (i int)",
            "CREATE SCHEMA api_made",
            "CREATE TEMPORARY TABLE t (i int)",
        ):
            with pytest.raises(DBAPIError) as refused:
                async with api.begin() as conn:
                    await conn.execute(text(ddl))
            assert pg_error(refused.value).sqlstate == "42501", (ddl, refused.value)

        schema = schema_name_for(uuid.uuid4())
        async with worker.begin() as conn:
            await (await driver_of(conn)).execute(tenant_schema_script(schema))
        async with api.begin() as conn:
            await conn.execute(
                text(f"INSERT INTO {quote_schema(schema)}.projects (id, name) VALUES (:i, 'x')"), {"i": uuid.uuid4()}
            )
            await conn.execute(text(f"UPDATE {quote_schema(schema)}.projects SET description = 'y'"))
            assert await conn.scalar(text(f"SELECT count(*) FROM {quote_schema(schema)}.projects")) == 1
            await conn.execute(text(f"DELETE FROM {quote_schema(schema)}.projects"))
        with pytest.raises(DBAPIError) as hidden:
            async with api.begin() as conn:
                await conn.execute(text(f"SELECT * FROM {quote_schema(schema)}.alembic_version"))
        assert pg_error(hidden.value).sqlstate == "42501"
        # No control-plane tables on a shard.
        async with worker.connect() as conn:
            assert await conn.scalar(text("SELECT to_regclass('public.tenants')")) is None
    finally:
        for created in engines:
            await created.dispose()
        async with two_shards.b_admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


# --- the connection budget per shard ------------------------------------------------------------


async def test_a_worker_whose_pool_cannot_fit_on_a_shard_refuses_to_start(
    database_urls: DatabaseUrls, shard_b_urls: DatabaseUrls
) -> None:
    """The control plane's budget fits; shard b's (busier) does not: the
    worker exits 1 naming the shard."""
    control_plane, on_b = await read_budget(database_urls.admin), await read_budget(shard_b_urls.admin)
    pool = control_plane.free - 3  # a little room for the session's pools
    assert pool > 0
    busy = max(on_b.free - pool + 3, 0)
    others = [await asyncpg.connect(asyncpg_dsn(shard_b_urls.admin)) for _ in range(busy)]
    try:
        assert (await read_budget(shard_b_urls.admin)).free < pool
        worker = spawn(
            "worker",
            "provisioner_worker",
            service_env(
                database_urls.admin,
                "127.0.0.1:1",  # never reached: the worker is refused before it connects to Temporal
                "budget-queue",
                TENANTRY_DB_POOL_SIZE=str(pool),
                TENANTRY_DB_MAX_OVERFLOW="0",
                TENANTRY_SHARDS=json.dumps({"b": shard_b_urls.admin}),
            ),
        )
        with stopping(worker):
            code = await asyncio.to_thread(worker.process.wait, 60)
        assert code == 1, worker.log_tail()
        log = worker.log_path.read_text()
        assert "Traceback" not in log
        plain = [line for line in log.splitlines() if not line.startswith("{")]
        assert len(plain) == 1, log
        assert plain[0].startswith(
            f"provisioner-worker: its database pool for shard b cannot fit: it may open {pool} connections "
        ), plain
    finally:
        for connection in others:
            await connection.close()


# --- fleet rollouts over both shards ------------------------------------------------------------


async def test_a_fleet_rollout_upgrades_the_tenants_of_both_shards_each_on_its_own_database(
    two_shards: TwoShards, database_urls: DatabaseUrls, worker_engine: AsyncEngine, temporal_client: Client
) -> None:
    b_worker = two_shards.worker["b"].engine
    on_default = await fleet_at(worker_engine, 12, "t0001")
    on_b = await fleet_at(worker_engine, 12, "t0001", shard="b", shard_engine=b_worker)
    try:
        settings = settings_for(database_urls, temporal_client, two_shards.stack.task_queue)
        code, out, err = await migrate_tenants(settings, "--canary", "2", "--concurrency", "3")
        assert code == 0, (out, err)
        assert "SUCCEEDED: 24 tenants upgraded" in out
        head = tenant_head_revision()
        # Each schema upgraded where it lives (b's on b: none of them exists on
        # the control plane's server), its row and its event in the control plane.
        assert [await stamp_on(two_shards.b_admin, schema_name_for(t)) for t in on_b] == [head] * 12
        assert not any([await schema_exists(worker_engine, schema_name_for(t)) for t in on_b])
        assert [await stamp_on(worker_engine, schema_name_for(t)) for t in on_default] == [head] * 12
        async with worker_engine.connect() as conn:
            recorded = (
                await conn.execute(
                    text("SELECT schema_version, count(*) FROM tenants WHERE id = ANY(:ids) GROUP BY 1"),
                    {"ids": on_default + on_b},
                )
            ).all()
        assert [tuple(row) for row in recorded] == [(head, 24)]
        assert await migrated_events(worker_engine, on_default + on_b) == dict.fromkeys(on_default + on_b, 1)
    finally:
        await retire_fleet(worker_engine, on_default)
        await retire_fleet(worker_engine, on_b, shard_engine=b_worker)


async def test_a_rollout_whose_control_plane_commit_was_lost_finishes_without_a_second_upgrade(
    two_shards: TwoShards, engine: AsyncEngine, worker_engine: AsyncEngine
) -> None:
    b_worker = two_shards.worker["b"].engine
    [tenant_id] = await fleet_at(worker_engine, 1, "t0001", shard="b", shard_engine=b_worker)
    schema, head = schema_name_for(tenant_id), tenant_head_revision()
    rollout = RolloutActivities(worker_engine, two_shards.worker)
    workflow_id = f"fleet-migrate-test-{uuid.uuid4().hex[:12]}"
    try:
        async with control_plane_commit_fails_once(engine, str(tenant_id)):
            with pytest.raises(DBAPIError) as lost:
                await rollout._upgrade_remote(tenant_id, head, workflow_id, "test")
        assert is_injected(lost.value)
        # The shard committed its DDL and stamp; the control plane still says t0001.
        assert await stamp_on(two_shards.b_admin, schema) == head
        async with worker_engine.connect() as conn:
            assert await conn.scalar(text("SELECT schema_version FROM tenants WHERE id = :i"), {"i": tenant_id}) == (
                "t0001"
            )
        # The retry finds the stamp at the target: it only records it (the
        # ADD COLUMN run twice would fail with DuplicateColumn).
        assert await rollout._upgrade_one(tenant_id, head, workflow_id, "test") == Outcome.UPGRADED
        async with worker_engine.connect() as conn:
            assert await conn.scalar(text("SELECT schema_version FROM tenants WHERE id = :i"), {"i": tenant_id}) == head
        assert await migrated_events(worker_engine, [tenant_id]) == {tenant_id: 1}
        # And a third run changes nothing: it is at the target.
        assert await rollout._upgrade_one(tenant_id, head, workflow_id, "test") == Outcome.SKIPPED
    finally:
        await retire_fleet(worker_engine, [tenant_id], shard_engine=b_worker)


async def test_a_rollout_batch_runs_the_lanes_of_both_databases_at_the_same_time(
    two_shards: TwoShards, worker_engine: AsyncEngine
) -> None:
    """concurrency 1 per database, yet the two databases' lanes overlap: a
    barrier holds the default tenant's upgrade until every b tenant is done,
    and b's first upgrade until the default lane has started. One lane
    serving both databases in turn would wait on itself (the timeout fails
    the test); per-database lanes pass it."""
    b_worker = two_shards.worker["b"].engine
    on_default = await fleet_at(worker_engine, 1, "t0001")
    on_b = await fleet_at(worker_engine, 3, "t0001", shard="b", shard_engine=b_worker)
    default_started, b_finished = asyncio.Event(), asyncio.Event()
    upgraded_on_b: set[uuid.UUID] = set()

    class BarrierRollout(RolloutActivities):
        async def _upgrade_one(self, tenant_id: uuid.UUID, *args: Any, **kwargs: Any) -> Outcome:
            if tenant_id in on_default:
                default_started.set()
                await asyncio.wait_for(b_finished.wait(), 30)
                return await super()._upgrade_one(tenant_id, *args, **kwargs)
            await asyncio.wait_for(default_started.wait(), 30)
            outcome = await super()._upgrade_one(tenant_id, *args, **kwargs)
            upgraded_on_b.add(tenant_id)
            if upgraded_on_b == set(on_b):
                b_finished.set()
            return outcome

    head = tenant_head_revision()
    workflow_id = f"fleet-migrate-test-{uuid.uuid4().hex[:12]}"
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=workflow_id)
    batch = BatchInput(
        MigrateFleetInput(target_revision=head), tenant_ids=[str(t) for t in on_default + on_b], concurrency=1
    )
    operation = {"id": workflow_id, "kind": OperationKind.MIGRATE, "head": head}
    async with worker_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO workflow_executions (workflow_id, kind, state, actor, target_revision) "
                "VALUES (:id, :kind, 'RUNNING', 'test', :head)"
            ),
            operation,
        )
    try:
        result = await env.run(BarrierRollout(worker_engine, two_shards.worker).migrate_batch, batch)
        assert result.upgraded == 4 and result.busy == [], result
        assert [await stamp_on(two_shards.b_admin, schema_name_for(t)) for t in on_b] == [head] * 3
        assert await stamp_on(worker_engine, schema_name_for(on_default[0])) == head
        assert await migrated_events(worker_engine, on_default + on_b) == dict.fromkeys(on_default + on_b, 1)
    finally:
        async with worker_engine.begin() as conn:
            await conn.execute(
                text("UPDATE workflow_executions SET state = 'SUCCEEDED' WHERE workflow_id = :id"), operation
            )
        await retire_fleet(worker_engine, on_default)
        await retire_fleet(worker_engine, on_b, shard_engine=b_worker)

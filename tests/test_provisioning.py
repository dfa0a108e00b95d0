"""Provisioning activities and workflows against the real PostgreSQL and Temporal.

The committed histories in tests/histories/ guard workflow determinism. To
regenerate them after an intentional, versioned workflow change:

    TENANTRY_WRITE_HISTORIES=1 .venv/bin/python -m pytest -q tests/test_provisioning.py -k replay
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.client import Client, WorkflowHistory
from temporalio.exceptions import ApplicationError, TimeoutType
from temporalio.exceptions import TimeoutError as TemporalTimeoutError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from provisioner_worker import workflows as workflows_module
from provisioner_worker.activities import (
    MEMBERSHIP_REFERENCE_MISSING,
    MEMBERSHIP_REFERENCE_MISSING_REASON,
    PROVISIONING_FAILED,
    PROVISIONING_TIMED_OUT,
    TENANT_NOT_FOUND,
    TENANT_NOT_PROVISIONABLE,
    FailProvisioningInput,
    TenantActivities,
    failure_text,
    provisioning_failure_reason,
)
from provisioner_worker.reconciler import ReconcileReport
from provisioner_worker.worker import activities_for
from provisioner_worker.workflows import WORKFLOWS
from tenantry.migrations import tenant_head_revision
from tenantry.schema_names import schema_name_for
from tenantry.v1 import operation_pb2, tenant_pb2, tenant_service_pb2
from tenantry.workflow_contract import (
    DELETE_WORKFLOW,
    MIGRATE_WORKFLOW,
    MOVE_WORKFLOW,
    PROVISION_WORKFLOW,
    RECONCILE_WORKFLOW,
    ProvisionTenantInput,
    ReconcileInput,
    provision_workflow_id,
)
from tests.stack import (
    HISTORIES_DIR,
    REPO_ROOT,
    Stack,
    delete_and_purge,
    failing_provisioning_stack,
    registration,
    running_stack,
    wait_done,
)

WORKFLOWS_SOURCE = REPO_ROOT / "services" / "provisioner_worker" / "workflows.py"
_TIMEOUT = timedelta(seconds=90)


# --- helpers ------------------------------------------------------------------------------------


def as_step(tenant_id: uuid.UUID | str) -> ActivityEnvironment:
    """Runs an activity as the tenant's first provisioning workflow would: the
    activities take their operation from the calling workflow's id."""
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        environment.info, workflow_id=provision_workflow_id(uuid.UUID(str(tenant_id)))
    )
    return environment


@asynccontextmanager
async def idle_stack(engine: AsyncEngine, client: Client) -> AsyncIterator[Stack]:
    """API with a real Temporal client but no worker: started workflows never run.
    They are terminated on exit so nothing is left behind in Temporal."""
    async with running_stack(engine=engine, client=client, with_worker=False) as stack:
        try:
            yield stack
        finally:
            async for execution in client.list_workflows(f"TaskQueue = '{stack.task_queue}'"):
                if execution.status is not None and execution.status.name == "RUNNING":
                    with contextlib.suppress(RPCError):
                        await client.get_workflow_handle(execution.id).terminate("test cleanup")


async def register_idle(stack: Stack, engine: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID, str]:
    """Registers a tenant whose workflow never runs: (tenant_id, admin_user_id, schema)."""
    response = await stack.stubs.tenants.RegisterTenant(registration())
    assert response.tenant.state == tenant_pb2.TENANT_STATE_CREATING
    tenant_id = uuid.UUID(response.tenant.id)
    async with engine.connect() as conn:
        admin = (
            await conn.execute(text("SELECT admin_user_id FROM tenants WHERE id = :id"), {"id": tenant_id})
        ).scalar_one()
    assert isinstance(admin, uuid.UUID)
    return tenant_id, admin, response.tenant.schema_name


async def schema_count(engine: AsyncEngine, schema: str) -> int:
    async with engine.connect() as conn:
        count = (
            await conn.execute(text("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = :s"), {"s": schema})
        ).scalar_one()
    assert isinstance(count, int)
    return count


async def membership_count(engine: AsyncEngine, tenant_id: uuid.UUID) -> int:
    async with engine.connect() as conn:
        count = (
            await conn.execute(text("SELECT count(*) FROM tenant_memberships WHERE tenant_id = :t"), {"t": tenant_id})
        ).scalar_one()
    assert isinstance(count, int)
    return count


async def tenant_row(engine: AsyncEngine, tenant_id: uuid.UUID) -> tuple[str, str]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT state, state_message FROM tenants WHERE id = :id"), {"id": tenant_id})
        ).one()
    return row[0], row[1]


async def expect_application_error(call: Any, error_type: str) -> ApplicationError:
    try:
        await call
    except ApplicationError as err:
        assert err.type == error_type, (err.type, str(err))
        assert err.non_retryable, f"{error_type} must be non-retryable"
        return err
    raise AssertionError(f"expected ApplicationError {error_type}")


def definition_name(fn: Callable[..., Any]) -> str:
    definition = activity._Definition.from_callable(fn)
    assert definition is not None and definition.name, f"{fn!r} is not an activity"
    return definition.name


# --- idempotency of the steps -------------------------------------------------------------------


async def _provisioned_state(engine: AsyncEngine, tenant_id: uuid.UUID, schema: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        versions = list((await conn.execute(text(f'SELECT version_num FROM "{schema}".alembic_version'))).scalars())
        tables = set(
            (
                await conn.execute(
                    text("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = :s"), {"s": schema}
                )
            ).scalars()
        )
        members = [
            tuple(r)
            for r in await conn.execute(
                text("SELECT user_id, role FROM tenant_memberships WHERE tenant_id = :t"), {"t": tenant_id}
            )
        ]
        tenant = (await conn.execute(text("SELECT state, version FROM tenants WHERE id = :t"), {"t": tenant_id})).one()
        operation = (
            await conn.execute(text("SELECT state FROM workflow_executions WHERE tenant_id = :t"), {"t": tenant_id})
        ).scalar_one()
    return {
        "versions": versions,
        "tables": tables,
        "members": members,
        "tenant": tuple(tenant),
        "operation": operation,
    }


async def test_provision_tenant_is_idempotent_and_safe_concurrently(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    activities = TenantActivities(engine, temporal_client)
    async with idle_stack(engine, temporal_client) as stack:
        tenant_id, user_id, schema = await register_idle(stack, engine)
    assert schema == schema_name_for(tenant_id)
    step = ProvisionTenantInput(tenant_id=str(tenant_id), admin_user_id=str(user_id))

    await asyncio.gather(*(as_step(tenant_id).run(activities.provision_tenant, step) for _ in range(5)))
    await as_step(tenant_id).run(activities.provision_tenant, step)

    assert await schema_count(engine, schema) == 1
    assert await _provisioned_state(engine, tenant_id, schema) == {
        "versions": [tenant_head_revision()],
        "tables": {"projects", "alembic_version"},
        "members": [(user_id, "admin")],
        # Activated exactly once: the version (etag) was bumped once.
        "tenant": ("ACTIVE", 2),
        "operation": "SUCCEEDED",
    }


async def test_provision_tenant_finishes_what_a_crashed_attempt_left(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    """Leftovers of a crash midway (by an older split of these steps, or by hand):
    an empty schema and an existing membership. The retry completes."""
    activities = TenantActivities(engine, temporal_client)
    async with idle_stack(engine, temporal_client) as stack:
        tenant_id, user_id, schema = await register_idle(stack, engine)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.execute(
            text("INSERT INTO tenant_memberships (tenant_id, user_id, role) VALUES (:t, :u, 'admin')"),
            {"t": tenant_id, "u": user_id},
        )
    await as_step(tenant_id).run(
        activities.provision_tenant, ProvisionTenantInput(tenant_id=str(tenant_id), admin_user_id=str(user_id))
    )
    state = await _provisioned_state(engine, tenant_id, schema)
    assert state["tables"] == {"projects", "alembic_version"}
    assert state["members"] == [(user_id, "admin")]
    assert state["tenant"][0] == "ACTIVE" and state["operation"] == "SUCCEEDED"


async def test_provision_tenant_concurrently_for_different_tenants(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    """Regression: alembic's process-global proxies once made concurrent upgrades
    run one tenant's DDL on another tenant's connection."""
    activities = TenantActivities(engine, temporal_client)
    async with idle_stack(engine, temporal_client) as stack:
        tenants = [await register_idle(stack, engine) for _ in range(8)]
    await asyncio.gather(
        *(
            as_step(t).run(activities.provision_tenant, ProvisionTenantInput(tenant_id=str(t), admin_user_id=str(u)))
            for t, u, _ in tenants
        )
    )
    async with engine.connect() as conn:
        for _, _, schema in tenants:
            versions = list((await conn.execute(text(f'SELECT version_num FROM "{schema}".alembic_version'))).scalars())
            assert versions == [tenant_head_revision()], schema


async def test_missing_admin_user_is_non_retryable_and_leaves_nothing(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    activities = TenantActivities(engine, temporal_client)
    async with idle_stack(engine, temporal_client) as stack:
        tenant_id, user_id, schema = await register_idle(stack, engine)

    missing_user = ProvisionTenantInput(tenant_id=str(tenant_id), admin_user_id=str(uuid.uuid4()))
    await expect_application_error(
        as_step(tenant_id).run(activities.provision_tenant, missing_user), MEMBERSHIP_REFERENCE_MISSING
    )
    # All or nothing: the schema created before the failing insert is gone too.
    assert await schema_count(engine, schema) == 0
    assert await membership_count(engine, tenant_id) == 0
    assert (await tenant_row(engine, tenant_id))[0] == "CREATING"

    missing_tenant = ProvisionTenantInput(tenant_id=str(uuid.uuid4()), admin_user_id=str(user_id))
    await expect_application_error(
        as_step(missing_tenant.tenant_id).run(activities.provision_tenant, missing_tenant), TENANT_NOT_FOUND
    )


# --- a late step cannot resurrect a deleted tenant ----------------------------------------------


async def test_late_steps_cannot_resurrect_a_deleted_tenant(engine: AsyncEngine, temporal_client: Client) -> None:
    activities = TenantActivities(engine, temporal_client)
    async with idle_stack(engine, temporal_client) as stack:
        tenant_id, user_id, schema = await register_idle(stack, engine)
        deleted = await stack.stubs.tenants.DeleteTenant(
            tenant_service_pb2.DeleteTenantRequest(tenant_id=str(tenant_id))
        )
        assert deleted.tenant.state == tenant_pb2.TENANT_STATE_DELETING

    step = ProvisionTenantInput(tenant_id=str(tenant_id), admin_user_id=str(user_id))
    await expect_application_error(as_step(tenant_id).run(activities.provision_tenant, step), TENANT_NOT_PROVISIONABLE)
    # Compensation after a delete leaves the cleanup to the deletion workflow.
    await as_step(tenant_id).run(
        activities.fail_provisioning, FailProvisioningInput(tenant_id=str(tenant_id), error_message="late")
    )

    assert (await tenant_row(engine, tenant_id))[0] == "DELETING"
    assert await schema_count(engine, schema) == 0
    assert await membership_count(engine, tenant_id) == 0


# --- compensation -------------------------------------------------------------------------------


async def test_failed_step_compensates_and_fails_tenant_and_operation(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    async with failing_provisioning_stack(engine=engine, client=temporal_client, message="boom") as stack:
        response = await stack.stubs.tenants.RegisterTenant(registration())
        operation = await wait_done(stack.stubs, response.operation.name)
        tenant = (
            await stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id))
        ).tenant

    assert operation.state == operation_pb2.OPERATION_STATE_FAILED
    assert tenant.state == tenant_pb2.TENANT_STATE_FAILED
    # The stable reason, not the exception's text.
    assert operation.error_message == tenant.state_message == failure_text(PROVISIONING_FAILED)
    assert "boom" not in operation.error_message
    tenant_id = uuid.UUID(response.tenant.id)
    assert await schema_count(engine, schema_name_for(tenant_id)) == 0
    assert await membership_count(engine, tenant_id) == 0


# --- failures reach clients as a stable reason, the detail only the worker's log ----------------


def test_failure_reasons_are_stable_and_free_of_detail() -> None:
    secret = "[SQL: INSERT INTO tenant_memberships ...] [parameters: ('t_0123',)]"
    fk = ApplicationError(secret, type=MEMBERSHIP_REFERENCE_MISSING, non_retryable=True)
    assert provisioning_failure_reason(fk) == MEMBERSHIP_REFERENCE_MISSING_REASON
    assert provisioning_failure_reason(ApplicationError(secret, type="DBAPIError")) == PROVISIONING_FAILED
    timeout = TemporalTimeoutError(secret, type=TimeoutType.START_TO_CLOSE, last_heartbeat_details=[])
    assert provisioning_failure_reason(timeout) == PROVISIONING_TIMED_OUT
    assert provisioning_failure_reason(None) == PROVISIONING_FAILED
    assert failure_text(MEMBERSHIP_REFERENCE_MISSING_REASON).startswith("MEMBERSHIP_REFERENCE_MISSING: ")
    # A reason this version does not know (or free text) is never stored as is.
    assert failure_text(secret) == failure_text(PROVISIONING_FAILED)


@asynccontextmanager
async def refusing_membership_trigger(engine: AsyncEngine, slug: str, sqlstate: str) -> AsyncIterator[str]:
    """A real PostgreSQL trigger that makes provisioning's activation fail for
    the tenant `slug` alone: inserting its admin membership raises `sqlstate`
    with a message holding the row's values. Yields the message's marker."""
    name = f"test_refuse_{uuid.uuid4().hex[:12]}"
    marker = f"refused-by-{name}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"""
                CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF EXISTS (SELECT 1 FROM tenants WHERE id = NEW.tenant_id AND slug = '{slug}') THEN
                        RAISE EXCEPTION '{marker} user % tenant %', NEW.user_id, NEW.tenant_id
                            USING ERRCODE = '{sqlstate}';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        await conn.execute(
            text(f"CREATE TRIGGER {name} BEFORE INSERT ON tenant_memberships FOR EACH ROW EXECUTE FUNCTION {name}()")
        )
    try:
        yield marker
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {name} ON tenant_memberships"))
            await conn.execute(text(f"DROP FUNCTION {name}()"))


@pytest.mark.parametrize(
    ("sqlstate", "reason"),
    [
        # A generic error: retried, then compensated. Its text is SQLAlchemy's,
        # with "[SQL: ...]" and "[parameters: ...]".
        ("P0001", PROVISIONING_FAILED),
        # A foreign-key violation: the step's own non-retryable error type.
        ("23503", MEMBERSHIP_REFERENCE_MISSING_REASON),
    ],
)
async def test_a_real_database_error_reaches_clients_as_a_reason_only(
    stack: Stack, engine: AsyncEngine, caplog: pytest.LogCaptureFixture, sqlstate: str, reason: str
) -> None:
    request = registration()
    async with refusing_membership_trigger(engine, request.slug, sqlstate) as marker:
        with caplog.at_level(logging.WARNING, logger="provisioner_worker.activities"):
            response = await stack.stubs.tenants.RegisterTenant(request)
            operation = await wait_done(stack.stubs, response.operation.name, timeout=90)
    tenant = (
        await stack.stubs.tenants.GetTenant(tenant_service_pb2.GetTenantRequest(tenant_id=response.tenant.id))
    ).tenant
    assert operation.state == operation_pb2.OPERATION_STATE_FAILED
    assert tenant.state == tenant_pb2.TENANT_STATE_FAILED
    assert operation.error_message == tenant.state_message == failure_text(reason)
    async with engine.connect() as conn:
        user_id = (
            await conn.execute(text("SELECT admin_user_id FROM tenants WHERE id = :id"), {"id": uuid.UUID(tenant.id)})
        ).scalar_one()
    leaks = [
        "SQL",
        "sql",
        "parameters",
        "INSERT",
        "UPDATE",
        "tenant_memberships",
        "workflow_executions",
        "asyncpg",
        "Traceback",
        marker,
        tenant.schema_name,
        tenant.id,
        str(user_id),
        response.operation.name.removeprefix("operations/"),
    ]
    for text_shown in (operation.error_message, tenant.state_message):
        assert [leak for leak in leaks if leak in text_shown] == [], text_shown
    # The detail is not lost: the worker logged it.
    logged = [r.getMessage() for r in caplog.records if r.name == "provisioner_worker.activities"]
    assert any(marker in m and tenant.id in m and reason in m for m in logged), logged
    assert tenant.state_message and await schema_count(engine, tenant.schema_name) == 0


# --- determinism: replaying real histories ------------------------------------------------------


async def _replay(history: WorkflowHistory) -> None:
    await Replayer(workflows=WORKFLOWS).replay_workflow(history)


async def test_replay_of_fresh_histories(stack: Stack, engine: AsyncEngine, temporal_client: Client) -> None:
    histories: dict[str, WorkflowHistory] = {}

    registered = await stack.stubs.tenants.RegisterTenant(registration())
    assert (await wait_done(stack.stubs, registered.operation.name)).state == operation_pb2.OPERATION_STATE_SUCCEEDED
    # Deleted, undeleted (the deletion's wait ends CANCELLED), deleted again and purged on request.
    tenant_id = registered.tenant.id
    undone = await stack.stubs.tenants.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(tenant_id=tenant_id))
    await stack.stubs.tenants.UndeleteTenant(tenant_service_pb2.UndeleteTenantRequest(tenant_id=tenant_id))
    assert (await wait_done(stack.stubs, undone.operation.name)).state == operation_pb2.OPERATION_STATE_CANCELLED
    purged = await delete_and_purge(stack.stubs, tenant_id)
    assert purged.state == operation_pb2.OPERATION_STATE_SUCCEEDED
    histories["provision-succeeded"] = await _history(temporal_client, registered.operation.name)
    histories["delete-undeleted"] = await _history(temporal_client, undone.operation.name)
    histories["delete-purged"] = await _history(temporal_client, purged.name)

    async with failing_provisioning_stack(engine=engine, client=temporal_client, message="boom") as boom:
        failed = await boom.stubs.tenants.RegisterTenant(registration())
        assert (await wait_done(boom.stubs, failed.operation.name)).state == operation_pb2.OPERATION_STATE_FAILED
    histories["provision-compensated"] = await _history(temporal_client, failed.operation.name)

    reconcile_id = f"test-reconcile-{uuid.uuid4().hex}"
    await temporal_client.execute_workflow(
        RECONCILE_WORKFLOW,
        ReconcileInput(pending_threshold_seconds=3600),
        id=reconcile_id,
        task_queue=stack.task_queue,
        result_type=ReconcileReport,
        execution_timeout=_TIMEOUT,
    )
    histories["reconcile"] = await temporal_client.get_workflow_handle(reconcile_id).fetch_history()

    for history in histories.values():
        await _replay(history)
        # And through the JSON form the committed fixtures use.
        await _replay(WorkflowHistory.from_json(history.workflow_id, history.to_json()))

    if os.environ.get("TENANTRY_WRITE_HISTORIES") == "1":
        # Adds the labels not committed yet; committed ones stay, since they
        # prove that histories recorded by earlier releases keep replaying.
        HISTORIES_DIR.mkdir(exist_ok=True)
        committed = {path.name.split("__", 1)[0] for path in HISTORIES_DIR.glob("*.json")}
        for label, history in histories.items():
            if label not in committed:
                (HISTORIES_DIR / f"{label}__{history.workflow_id}.json").write_text(history.to_json() + "\n")


async def _history(client: Client, operation_name: str) -> WorkflowHistory:
    return await client.get_workflow_handle(operation_name.removeprefix("operations/")).fetch_history()


def _committed_histories() -> list[Path]:
    return sorted(HISTORIES_DIR.glob("*.json"))


async def test_replay_of_committed_histories() -> None:
    files = _committed_histories()
    labels = {path.name.split("__", 1)[0] for path in files}
    assert labels >= {
        "provision-succeeded",
        "provision-compensated",
        "delete-succeeded",  # recorded before retention: purged at once
        "delete-undeleted",
        "delete-purged",
        "reconcile",
        "fleet-migrate",  # recorded by tests/test_fleet_migrations.py
        "move-succeeded",  # recorded by tests/test_move.py
        "move-rolled-back",
    }, labels
    workflow_types = set()
    for path in files:
        workflow_id = path.name.split("__", 1)[1].removesuffix(".json")
        history = WorkflowHistory.from_json(workflow_id, path.read_text())
        started = history.events[0].workflow_execution_started_event_attributes
        workflow_types.add(started.workflow_type.name)
        await _replay(history)
    assert workflow_types == {PROVISION_WORKFLOW, DELETE_WORKFLOW, RECONCILE_WORKFLOW, MIGRATE_WORKFLOW, MOVE_WORKFLOW}


# --- registration completeness ------------------------------------------------------------------


def _activity_references() -> set[tuple[str, str]]:
    tree = ast.parse(WORKFLOWS_SOURCE.read_text())
    return {
        (node.value.id, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("TenantActivities", "ReconcilerActivities", "MoveActivities")
    }


def _workflow_class_names() -> set[str]:
    tree = ast.parse(WORKFLOWS_SOURCE.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(
            "defn" in ast.unparse(decorator) and "workflow" in ast.unparse(decorator)
            for decorator in node.decorator_list
        )
    }


async def test_every_referenced_activity_and_workflow_is_registered(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    references = _activity_references()
    assert len(references) >= 5, references  # provision, compensate, cancel, purge, reconcile
    referenced = {definition_name(getattr(getattr(workflows_module, cls), attr)) for cls, attr in references}

    registered_fns = activities_for(engine, temporal_client, "completeness-check")
    registered = [definition_name(fn) for fn in registered_fns]
    assert len(registered) == len(set(registered)), f"duplicate activity names: {registered}"
    assert referenced <= set(registered), f"not registered: {referenced - set(registered)}"

    classes = _workflow_class_names()
    assert classes, "no workflow classes found"
    assert classes == {cls.__name__ for cls in WORKFLOWS}
    workflow_names = {getattr(cls, "__temporal_workflow_definition").name for cls in WORKFLOWS}
    assert workflow_names == {PROVISION_WORKFLOW, DELETE_WORKFLOW, RECONCILE_WORKFLOW, MIGRATE_WORKFLOW, MOVE_WORKFLOW}

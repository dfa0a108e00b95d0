"""The three database roles (tenantry.db_roles) on the real embedded server:
the API's role has DML only (any DDL, and any table it does not need, fails with
SQLSTATE 42501), the worker's owns the tenant schemas it creates, and the whole
lifecycle works with each process as its role (the session `stack` runs so)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.db.engine import driver_of
from tenantry.db.models import Base
from tenantry.db_roles import API, CONTROL_PLANE_GRANTS, MIGRATOR, WORKER, grant_statements
from tenantry.migrate import ensure_roles, grant_privileges
from tenantry.migrations import tenant_schema_script
from tenantry.pg_errors import pg_error
from tenantry.schema_names import quote_schema, schema_name_for
from tenantry.v1 import operation_pb2, project_service_pb2, tenant_pb2
from tenantry_dev.embedded import DatabaseUrls
from tests.stack import Stack, by_id, delete_and_purge, eventually, register_active, run_migrate, schema_exists

INSUFFICIENT_PRIVILEGE = "42501"


async def sqlstate_of(engine: AsyncEngine, statement: str) -> str | None:
    """The SQLSTATE `statement` fails with on `engine` (rolled back), None if it succeeds."""
    async with engine.connect() as conn:
        try:
            await conn.execute(text(statement))
        except DBAPIError as exc:
            return pg_error(exc).sqlstate
        finally:
            await conn.rollback()
    return None


@pytest.fixture(scope="module")
async def tenant(stack: Stack) -> tenant_pb2.Tenant:
    """Provisioned by the worker's role, through the API's."""
    return await register_active(stack.stubs)


def test_every_control_plane_table_is_in_the_grant_map() -> None:
    assert set(CONTROL_PLANE_GRANTS) == set(Base.metadata.tables) - {"alembic_version"}
    assert "alembic_version" not in Base.metadata.tables
    statements = grant_statements([])
    assert not any("GRANT" in s and "alembic_version" in s and not s.startswith("REVOKE") for s in statements)


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE SCHEMA t_" + "f" * 32,
        "CREATE TABLE public.not_allowed (id int)",
        "CREATE TEMPORARY TABLE not_allowed (id int)",
        "ALTER TABLE tenants ADD COLUMN not_allowed int",
        "DROP TABLE request_records",
        "TRUNCATE tenant_events",
        "SELECT * FROM alembic_version",
        "SELECT pg_catalog.count(*) FROM alembic_version",
    ],
)
async def test_api_role_cannot_change_or_read_what_it_does_not_need(api_engine: AsyncEngine, statement: str) -> None:
    assert await sqlstate_of(api_engine, statement) == INSUFFICIENT_PRIVILEGE


async def test_api_role_cannot_touch_a_tenant_schemas_ddl(
    api_engine: AsyncEngine, engine: AsyncEngine, tenant: tenant_pb2.Tenant
) -> None:
    schema = quote_schema(tenant.schema_name)
    for statement in (
        f"DROP SCHEMA {schema} CASCADE",
        f"ALTER TABLE {schema}.projects ADD COLUMN not_allowed int",
        f"CREATE TABLE {schema}.not_allowed (id int)",
        f"DROP TABLE {schema}.projects",
        f"SELECT * FROM {schema}.alembic_version",
    ):
        assert await sqlstate_of(api_engine, statement) == INSUFFICIENT_PRIVILEGE, statement
    # DML is what it has.
    assert await sqlstate_of(api_engine, f"SELECT count(*) FROM {schema}.projects") is None
    assert await sqlstate_of(api_engine, f"DELETE FROM {schema}.projects WHERE false") is None
    assert await schema_exists(engine, tenant.schema_name)


async def test_worker_role_owns_tenant_schemas_but_not_the_control_plane(
    worker_engine: AsyncEngine, engine: AsyncEngine, tenant: tenant_pb2.Tenant
) -> None:
    async with engine.connect() as conn:
        owners = (
            await conn.execute(
                text(
                    "SELECT pg_get_userbyid(n.nspowner), pg_get_userbyid(c.relowner) FROM pg_namespace n "
                    "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'projects' WHERE n.nspname = :s"
                ),
                {"s": tenant.schema_name},
            )
        ).one()
        table_owners = set(
            (await conn.execute(text("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'"))).scalars()
        )
    assert tuple(owners) == (WORKER, WORKER)
    assert table_owners == {MIGRATOR}
    for statement in (
        "ALTER TABLE tenants ADD COLUMN not_allowed int",
        "CREATE TABLE public.not_allowed (id int)",
        "SELECT * FROM alembic_version",
        # It may forget old request records, never write one.
        "INSERT INTO request_records (request_id, method, tenant_id, response) "
        "VALUES (gen_random_uuid(), 'x', gen_random_uuid(), '')",
        "UPDATE request_records SET method = 'x'",
    ):
        assert await sqlstate_of(worker_engine, statement) == INSUFFICIENT_PRIVILEGE, statement


async def test_lifecycle_end_to_end_as_the_roles(stack: Stack, engine: AsyncEngine) -> None:
    tenant = await register_active(stack.stubs)
    created = await stack.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="Gemini"), metadata=by_id(tenant.id), timeout=10
    )
    listed = await stack.stubs.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=by_id(tenant.id), timeout=10
    )
    assert [p.id for p in listed.projects] == [created.project.id]

    operation = await delete_and_purge(stack.stubs, tenant.id)
    assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
    assert not await schema_exists(engine, tenant.schema_name)


async def test_roles_and_grants_are_idempotent_and_adopt_older_objects(
    database_urls: DatabaseUrls, engine: AsyncEngine, api_engine: AsyncEngine
) -> None:
    # A tenant schema as a superuser left it before the roles existed: its
    # owner, no access for the API.
    schema = schema_name_for(uuid.uuid4())
    quoted = quote_schema(schema)
    async with engine.begin() as conn:
        await (await driver_of(conn)).execute(tenant_schema_script(schema))
        await conn.execute(text(f"REVOKE ALL ON SCHEMA {quoted} FROM {API}"))
        await conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA {quoted} FROM {API}"))
    try:
        assert await sqlstate_of(api_engine, f"SELECT count(*) FROM {quoted}.projects") == INSUFFICIENT_PRIVILEGE
        for _ in range(2):
            await ensure_roles(database_urls.admin)
            await grant_privileges(database_urls.migrator)
        assert await sqlstate_of(api_engine, f"SELECT count(*) FROM {quoted}.projects") is None
        assert await sqlstate_of(api_engine, f"SELECT * FROM {quoted}.alembic_version") == INSUFFICIENT_PRIVILEGE
        async with engine.connect() as conn:
            owner = await conn.scalar(
                text("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = :s"), {"s": schema}
            )
            table_owner = await conn.scalar(
                text("SELECT tableowner FROM pg_tables WHERE schemaname = :s AND tablename = 'projects'"),
                {"s": schema},
            )
        assert (owner, table_owner) == (WORKER, WORKER)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quoted} CASCADE"))


async def test_tenantry_migrate_runs_as_the_migrator_and_roles_needs_a_superuser(
    database_urls: DatabaseUrls,
) -> None:
    migrated = await asyncio.to_thread(run_migrate, {"TENANTRY_DATABASE_URL": database_urls.migrator})
    assert migrated.returncode == 0, migrated.stderr
    refused = await asyncio.to_thread(run_migrate, {"TENANTRY_DATABASE_URL": database_urls.api}, "roles")
    assert refused.returncode == 1
    assert "needs a superuser" in refused.stderr, refused.stderr
    unknown = await asyncio.to_thread(run_migrate, {"TENANTRY_DATABASE_URL": database_urls.migrator}, "nonsense")
    assert unknown.returncode == 2 and "usage" in unknown.stderr


async def test_grants_skip_a_tenant_schema_dropped_while_they_run(
    database_urls: DatabaseUrls, engine: AsyncEngine, worker_engine: AsyncEngine
) -> None:
    schema = schema_name_for(uuid.uuid4())
    async with worker_engine.begin() as conn:
        await (await driver_of(conn)).execute(tenant_schema_script(schema))
    async with worker_engine.connect() as dropper:
        await dropper.begin()
        await dropper.execute(text(f"DROP SCHEMA {quote_schema(schema)} CASCADE"))
        # The grants list the schema (the drop is not committed) and then wait
        # for the dropping transaction's lock on it.
        granting = asyncio.create_task(grant_privileges(database_urls.migrator))

        async def waiting_for_the_drop() -> bool:
            async with engine.connect() as conn:
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = :migrator "
                        "AND wait_event_type = 'Lock' AND query LIKE 'GRANT%'"
                    ),
                    {"migrator": MIGRATOR},
                )
                return bool(waiting)

        await eventually(waiting_for_the_drop, timeout=30)
        await dropper.commit()
    await asyncio.wait_for(granting, 30)
    assert not await schema_exists(engine, schema)

"""The three database roles and what each may do (design.md, "Least privilege").

- the migrator owns the control-plane tables and runs `tenantry-migrate`;
- the worker creates and drops tenant schemas (it owns them and their tables)
  and has DML on the control-plane tables it writes;
- the API has DML only: on the control-plane tables it needs and, through the
  worker's default privileges, on every tenant table. Any DDL fails with
  SQLSTATE 42501, and it cannot read what it does not need (alembic_version).

Two steps, both idempotent:
- `create_roles` (`tenantry-migrate roles`, as a superuser or a role with
  CREATEROLE, once per cluster and after upgrades of this module): the roles
  (LOGIN, no password: the operator sets passwords or another authentication),
  their database-level rights, and it hands objects made before the roles
  existed to their owners.
- `apply_grants` (`tenantry-migrate` after upgrading, as the migrator): every
  table privilege, derived from CONTROL_PLANE_GRANTS and TENANT_TABLE_GRANTS
  alone; what the map does not grant is revoked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.admission import ADMISSION_TABLE
from tenantry.pg_errors import SCHEMA_GONE_SQLSTATES, pg_error
from tenantry.schema_names import SCHEMA_NAME_REGEX, quote_schema

MIGRATOR = "tenantry_migrator"
WORKER = "tenantry_worker"
API = "tenantry_api"
ROLES = (MIGRATOR, WORKER, API)

DML = ("SELECT", "INSERT", "UPDATE", "DELETE")
APPEND_ONLY = ("SELECT", "INSERT")
COUNTER = ("SELECT", "UPDATE")

# Control-plane table -> role -> privileges. The one place table privileges are
# declared; a table missing here is reachable by its owner (the migrator) only,
# like alembic_version. A test holds the keys to the models' tables.
CONTROL_PLANE_GRANTS: Mapping[str, Mapping[str, Sequence[str]]] = {
    "users": {API: DML, WORKER: DML},
    "tenants": {API: DML, WORKER: DML},
    "tenant_memberships": {API: DML, WORKER: DML},
    "workflow_executions": {API: DML, WORKER: DML},
    "tenant_event_counter": {API: COUNTER, WORKER: COUNTER},
    "tenant_events": {API: APPEND_ONLY, WORKER: APPEND_ONLY},
    # The reconciler forgets records past their retention.
    "request_records": {API: DML, WORKER: ("SELECT", "DELETE")},
    "rollout_failures": {API: ("SELECT",), WORKER: DML},
}
# Tables inside a tenant schema (all created by the worker, who owns them):
# role -> privileges, given by the worker's default privileges as the tables
# are created, and to existing tables by apply_grants. A tenant schema's own
# alembic_version stays the worker's.
TENANT_TABLE_GRANTS: Mapping[str, Sequence[str]] = {API: DML}
# Tables every shard database has outside tenant schemas (the control plane's
# too), owned by the migrator: table -> role -> privileges. The gate admits
# and the lifecycle changes fence (tenantry.db.admission); nobody deletes.
SHARD_TABLE_GRANTS: Mapping[str, Mapping[str, Sequence[str]]] = {
    ADMISSION_TABLE: {API: ("SELECT", "INSERT", "UPDATE"), WORKER: ("SELECT", "INSERT", "UPDATE")},
}

# The same key as migrations/control_plane/env.py: grants and migrations of
# concurrent `tenantry-migrate` runs never interleave.
MIGRATION_LOCK_KEY = 7_412_020_001


class NotSuperuserError(Exception):
    pass


def _privileges(privileges: Sequence[str]) -> str:
    allowed = set(DML) | {"TRUNCATE", "REFERENCES", "TRIGGER"}
    unknown = set(privileges) - allowed
    if unknown:
        raise ValueError(f"unknown privileges {sorted(unknown)}")
    return ", ".join(privileges)


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


def tenant_schema_access(schema: str) -> list[str]:
    """What makes a tenant schema the API's to use: USAGE on it, the declared
    privileges on its tables (existing ones; new ones get them by default) and
    nothing on its alembic_version. Run by the schema's owner (the worker), in
    the transaction that creates or upgrades it."""
    quoted = quote_schema(schema)
    statements = []
    for role, privileges in TENANT_TABLE_GRANTS.items():
        statements += [
            f"GRANT USAGE ON SCHEMA {quoted} TO {_ident(role)}",
            f"GRANT {_privileges(privileges)} ON ALL TABLES IN SCHEMA {quoted} TO {_ident(role)}",
            f"REVOKE ALL ON TABLE {quoted}.alembic_version FROM {_ident(role)}",
        ]
    return statements


def grant_statements(tenant_schemas: Sequence[str]) -> list[str]:
    """Every statement apply_grants runs, in order (pure: tests read it too);
    apply_grants runs each schema's part apart, so a schema dropped meanwhile
    is skipped."""
    grantees = sorted({role for grants in CONTROL_PLANE_GRANTS.values() for role in grants} | {WORKER, API})
    statements = []
    for table, grants in CONTROL_PLANE_GRANTS.items():
        statements.append(f"REVOKE ALL ON TABLE public.{_ident(table)} FROM {', '.join(map(_ident, grantees))}")
        for role, privileges in grants.items():
            statements.append(f"GRANT {_privileges(privileges)} ON TABLE public.{_ident(table)} TO {_ident(role)}")
    statements.append(f"REVOKE ALL ON TABLE public.alembic_version FROM {', '.join(map(_ident, grantees))}")
    return statements + shard_grant_statements(tenant_schemas)


def shard_grant_statements(tenant_schemas: Sequence[str]) -> list[str]:
    """The tenant-schema part of grant_statements: all a shard that is not
    the control plane's database needs (it holds no control-plane table)."""
    worker = _ident(WORKER)
    statements = [
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {worker} GRANT {_privileges(privileges)} ON TABLES TO {_ident(role)}"
        for role, privileges in TENANT_TABLE_GRANTS.items()
    ]
    for table, grants in SHARD_TABLE_GRANTS.items():
        statements.append(f"REVOKE ALL ON TABLE public.{_ident(table)} FROM {_ident(WORKER)}, {_ident(API)}")
        for role, privileges in grants.items():
            statements.append(f"GRANT {_privileges(privileges)} ON TABLE public.{_ident(table)} TO {_ident(role)}")
    for schema in tenant_schemas:
        statements += tenant_schema_access(schema)
    return statements


async def _tenant_schemas(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(
        text("SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname ~ :pattern ORDER BY nspname"),
        {"pattern": SCHEMA_NAME_REGEX},
    )
    return [row[0] for row in rows]


async def apply_grants(conn: AsyncConnection, *, shard_only: bool = False) -> None:
    """Every table privilege of the map, on `conn`'s transaction (the caller
    commits). As the migrator (a member of the worker's role, so it may grant
    on tenant schemas) or a superuser. `shard_only`: a shard's database that
    is not the control plane's (tenant schemas only)."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    for statement in shard_grant_statements([]) if shard_only else grant_statements([]):
        await conn.execute(text(statement))
    for schema in await _tenant_schemas(conn):
        try:
            async with conn.begin_nested():
                for statement in tenant_schema_access(schema):
                    await conn.execute(text(statement))
        except DBAPIError as exc:
            # Dropped by a worker since it was listed: nothing left to grant on.
            if pg_error(exc).sqlstate not in SCHEMA_GONE_SQLSTATES:
                raise


async def create_roles(conn: AsyncConnection) -> None:
    """The three roles and their database-level rights, idempotently, on
    `conn`'s transaction; then objects created before the roles existed pass to
    their owners: control-plane tables and functions to the migrator, tenant
    schemas and their tables to the worker. Needs a superuser (it changes
    owners and the database's rights): NotSuperuserError otherwise."""
    if await conn.scalar(text("SELECT current_setting('is_superuser')")) != "on":
        user = await conn.scalar(text("SELECT current_user"))
        raise NotSuperuserError(f"creating the database roles needs a superuser; {user} is not one")
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    existing = set((await conn.execute(text("SELECT rolname FROM pg_catalog.pg_roles"))).scalars())
    for role in ROLES:
        if role not in existing:
            await conn.execute(text(f"CREATE ROLE {_ident(role)} LOGIN"))
    database = _ident(str(await conn.scalar(text("SELECT current_database()"))))
    for statement in (
        # Nobody but the roles below connects or creates by default; temporary
        # tables are DDL the API must not run either.
        f"REVOKE CREATE, TEMPORARY ON DATABASE {database} FROM PUBLIC",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {database} TO {_ident(MIGRATOR)}, {_ident(WORKER)}, {_ident(API)}",
        # The migrator creates the control-plane tables in public.
        f"GRANT USAGE, CREATE ON SCHEMA public TO {_ident(MIGRATOR)}",
        f"GRANT USAGE ON SCHEMA public TO {_ident(WORKER)}, {_ident(API)}",
        # The worker creates tenant schemas.
        f"GRANT CREATE ON DATABASE {database} TO {_ident(WORKER)}",
        # The migrator grants on the worker's schemas and sets its default privileges.
        f"GRANT {_ident(WORKER)} TO {_ident(MIGRATOR)}",
    ):
        await conn.execute(text(statement))
    await _adopt(conn)


async def _adopt(conn: AsyncConnection) -> None:
    tables = await conn.execute(
        text(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') "
            "AND pg_catalog.pg_get_userbyid(c.relowner) <> :migrator"
        ),
        {"migrator": MIGRATOR},
    )
    for (table,) in tables.all():
        await conn.execute(text(f"ALTER TABLE public.{_ident(table)} OWNER TO {_ident(MIGRATOR)}"))
    functions = await conn.execute(
        text(
            "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p "
            "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND pg_catalog.pg_get_userbyid(p.proowner) <> :migrator"
        ),
        {"migrator": MIGRATOR},
    )
    for (function,) in functions.all():
        # regprocedure's text is already quoted where it needs to be.
        await conn.execute(text(f"ALTER FUNCTION {function} OWNER TO {_ident(MIGRATOR)}"))
    schemas = await conn.execute(
        text(
            "SELECT nspname FROM pg_catalog.pg_namespace "
            "WHERE nspname ~ :pattern AND pg_catalog.pg_get_userbyid(nspowner) <> :worker"
        ),
        {"pattern": SCHEMA_NAME_REGEX, "worker": WORKER},
    )
    for (schema,) in schemas.all():
        await conn.execute(text(f"ALTER SCHEMA {quote_schema(schema)} OWNER TO {_ident(WORKER)}"))
    tenant_tables = await conn.execute(
        text(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname ~ :pattern AND c.relkind IN ('r', 'p') "
            "AND pg_catalog.pg_get_userbyid(c.relowner) <> :worker"
        ),
        {"pattern": SCHEMA_NAME_REGEX, "worker": WORKER},
    )
    for schema, table in tenant_tables.all():
        await conn.execute(text(f"ALTER TABLE {quote_schema(schema)}.{_ident(table)} OWNER TO {_ident(WORKER)}"))

"""Running the two alembic lineages: control plane and tenant schemas."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, create_mock_engine, insert, text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.schema import CreateSchema, ExecutableDDLElement

from tenantry.db.models import TenantBase
from tenantry.db_roles import tenant_schema_access
from tenantry.settings import migrations_dir_from


def migrations_dir() -> Path:
    """TENANTRY_MIGRATIONS_DIR as settings.py reads it (the worker and
    tenantry-migrate validate it at start; tests and tools get the default)."""
    return migrations_dir_from(os.environ)


def _config(lineage: str, directory: Path | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str((directory or migrations_dir()) / lineage))
    return config


def upgrade_control_plane(database_url: str, migrations: Path | None = None) -> None:
    """Blocking; runs its own event loop (call from a thread inside async code).
    `migrations`: the directory of the lineages, by default TENANTRY_MIGRATIONS_DIR's."""
    config = _config("control_plane", migrations)
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


def tenant_head_revision() -> str:
    head = _tenant_script().get_current_head()
    assert head is not None
    return head


@cache
def _tenant_script() -> ScriptDirectory:
    # Parsing the revision files is most of an upgrade's cost; do it once.
    return ScriptDirectory.from_config(_config("tenant"))


def upgrade_tenant_schema(connection: Connection, schema: str) -> None:
    """Brings one tenant schema to head on `connection`, inside its transaction.
    What `alembic upgrade head` does, with the script directory cached."""
    config = _config("tenant")
    config.attributes["connection"] = connection
    config.attributes["tenant_schema"] = schema
    script = _tenant_script()

    def upgrade(revision: Any, _context: MigrationContext) -> Any:
        return script._upgrade_revs("head", revision)

    with EnvironmentContext(config, script, fn=upgrade, destination_rev="head"):
        script.run_env()
    # The API's access, as for a schema the script creates (the tables just
    # created already have it by the worker's default privileges).
    for statement in tenant_schema_access(schema):
        connection.execute(text(statement))


# Alembic's version table as alembic's MigrationContext creates it; in a tenant's
# own schema, like every table of that lineage (schema-less here, translated).
_TENANT_VERSION_TABLE = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


@cache
def _tenant_ddl() -> tuple[Dialect, tuple[ExecutableDDLElement, ...]]:
    """What create_all emits for the tenant tables and the version table, in
    order, captured once with SQLAlchemy's mock engine, and its dialect."""
    emitted: list[ExecutableDDLElement] = []
    mock = create_mock_engine("postgresql+asyncpg://", lambda sql, *_, **__: emitted.append(sql))
    TenantBase.metadata.create_all(mock, checkfirst=False)
    _TENANT_VERSION_TABLE.create(mock, checkfirst=False)
    return mock.dialect, tuple(emitted)


def tenant_schema_script(schema: str) -> str:
    """The SQL that creates `schema` at head in one go: the schema, the tenant
    tables as the models declare them and the version table stamped at head
    (alembic's recipe for building a database from scratch). One script, so a
    new tenant costs one round trip and none of alembic's process-global `op`
    and `context` (no lock between concurrent provisionings). Tests hold it to
    what the lineage's migrations build, catalog entry by catalog entry, and
    check that alembic then upgrades the result like any other schema. Ends
    with the API's access to the schema (tenantry.db_roles), so it needs the
    roles of `tenantry-migrate roles`."""
    dialect, ddl_statements = _tenant_ddl()
    translate: dict[str | None, str] = {None: schema}
    stamp = insert(_TENANT_VERSION_TABLE).values(version_num=tenant_head_revision())
    statements = [
        CreateSchema(schema).compile(dialect=dialect),
        *(
            ddl.compile(dialect=dialect, schema_translate_map=translate, render_schema_translate=True)
            for ddl in ddl_statements
        ),
        stamp.compile(
            dialect=dialect,
            schema_translate_map=translate,
            render_schema_translate=True,
            compile_kwargs={"literal_binds": True},
        ),
    ]
    rendered = [str(statement).strip() for statement in statements] + tenant_schema_access(schema)
    return ";\n".join(rendered) + ";"

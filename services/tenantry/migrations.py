"""Running the two alembic lineages: control plane and tenant schemas."""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
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

log = logging.getLogger(__name__)


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


def upgrade_tenant_schema(connection: Connection, schema: str, destination: str = "head") -> None:
    """Brings one tenant schema to `destination` (default head) on `connection`,
    inside its transaction. What `alembic upgrade` does, with the script
    directory cached. Alembic's `op` and `context` are process-global: never
    run two of these interleaved on one event loop."""
    config = _config("tenant")
    config.attributes["connection"] = connection
    config.attributes["tenant_schema"] = schema
    script = _tenant_script()

    def upgrade(revision: Any, _context: MigrationContext) -> Any:
        return script._upgrade_revs(destination, revision)

    with EnvironmentContext(config, script, fn=upgrade, destination_rev=destination):
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


# --- fleet rollouts: each revision step rendered once ------------------------

# The schema name a rendered step is written for; replaced per tenant. A bare
# lower-case identifier, so alembic never quotes it, and no tenant schema
# (`t_` + 32 hex digits) can contain it.
PLACEHOLDER_SCHEMA = "tenantry_tenant_schema_placeholder"
_PLACEHOLDER = re.compile(rf"\b{PLACEHOLDER_SCHEMA}\b")


@cache
def tenant_revisions() -> tuple[str, ...]:
    """The tenant lineage, oldest first (one branch: tests hold it to that).
    Cached like _tenant_script: a rollout asks for it several times per
    tenant, and walking alembic's revision map was half of the worker's CPU
    per tenant."""
    revisions = [r.revision for r in _tenant_script().walk_revisions("base", "heads")]
    return tuple(reversed(revisions))


def resolve_tenant_revision(target: str | None) -> str:
    """`target` as a revision id (None or "head": the head); ValueError for
    one the lineage does not have."""
    if target in (None, "", "head", "heads"):
        return tenant_head_revision()
    if target not in tenant_revisions():
        raise ValueError(f"unknown tenant revision {target!r} (known: {', '.join(tenant_revisions())})")
    return target


def revisions_before(target: str) -> tuple[str, ...]:
    """The revisions a schema can be at and still need upgrading to `target`."""
    revisions = tenant_revisions()
    return revisions[: revisions.index(target)]


def _render(from_revision: str | None, to_revision: str) -> str:
    buffer = io.StringIO()
    config = _config("tenant")
    config.output_buffer = buffer
    config.attributes["tenant_schema"] = PLACEHOLDER_SCHEMA
    span = f"{from_revision}:{to_revision}" if from_revision else to_revision
    command.upgrade(config, span, sql=True)
    return buffer.getvalue()


def _statements(rendered: str) -> list[str]:
    """Alembic's offline output as statements: comments and blank lines go,
    each statement ends with a line ending in `;`."""
    statements: list[str] = []
    current: list[str] = []
    for line in rendered.splitlines():
        if not line.strip() or line.lstrip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    if current:
        raise ValueError("unterminated statement in rendered migration")
    return statements


@cache
def render_tenant_step(from_revision: str | None, to_revision: str) -> tuple[str, ...] | None:
    """One revision step's SQL (alembic offline mode, `--sql`), rendered once
    for PLACEHOLDER_SCHEMA: its DDL and the version stamp's update (or, from
    base, the version table and its insert). None when alembic cannot render
    it (a revision that reads the database); the rollout then runs alembic
    online for that step."""
    try:
        statements = _statements(_render(from_revision, to_revision))
    except Exception:  # noqa: BLE001 - any failure to render means: run it online
        log.warning("tenant revision %s cannot be rendered offline; it runs through alembic", to_revision)
        return None
    return tuple(statements)


def for_schema(statements: tuple[str, ...], schema: str) -> str:
    """A rendered step as one script for `schema` (a tenant schema name)."""
    return ";\n".join(_PLACEHOLDER.sub(schema, statement) for statement in statements) + ";"


@dataclass(frozen=True)
class UpgradeStep:
    """One revision step: `statements` rendered for PLACEHOLDER_SCHEMA, or
    None when it must run through alembic online."""

    from_revision: str
    to_revision: str
    statements: tuple[str, ...] | None


def upgrade_steps(from_revision: str, to_revision: str) -> list[UpgradeStep]:
    """The steps from `from_revision` up to `to_revision` (empty when there)."""
    revisions = tenant_revisions()
    start, end = revisions.index(from_revision), revisions.index(to_revision)
    return [
        UpgradeStep(revisions[i], revisions[i + 1], render_tenant_step(revisions[i], revisions[i + 1]))
        for i in range(start, end)
    ]


def tenant_schema_script_at(schema: str, revision: str) -> str:
    """A new schema built by the lineage's own steps up to `revision`, as
    alembic renders them (schema, tables, version table stamped), with the
    API's access. For schemas at an older revision than head (tests and the
    benchmark's fleets); new tenants use tenant_schema_script."""
    statements = render_tenant_step(None, revision)
    if statements is None:
        raise ValueError(f"tenant revisions up to {revision} cannot be rendered offline")
    script = f"{CreateSchema(schema).compile()};\n" + for_schema(statements, schema)
    return script + "\n" + ";\n".join(tenant_schema_access(schema)) + ";"

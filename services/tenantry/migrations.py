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
from sqlalchemy.engine import Connection


def migrations_dir() -> Path:
    configured = os.environ.get("TENANTRY_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    # services/tenantry/migrations.py -> repository root
    return Path(__file__).resolve().parents[2] / "migrations"


def _config(lineage: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir() / lineage))
    return config


def upgrade_control_plane(database_url: str) -> None:
    """Blocking; runs its own event loop (call from a thread inside async code)."""
    config = _config("control_plane")
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

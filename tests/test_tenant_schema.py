"""A tenant schema is the same whichever way it is built: replaying the tenant
lineage's migrations (alembic) or the provisioning fast path (one script from
the models, stamped at head; the benchmark's DDL floor runs the same script).
Compared in PostgreSQL's own catalog, on a real database."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tenantry.db.engine import driver_of
from tenantry.migrations import tenant_head_revision, tenant_schema_script, upgrade_tenant_schema
from tenantry.schema_names import quote_schema

# Everything in a schema that a query or a later migration could tell apart.
_CATALOG_QUERIES = {
    "relations": "SELECT relname, relkind::text FROM pg_class WHERE relnamespace = CAST(:s AS regnamespace) ORDER BY 1",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = CAST(:s AS regnamespace) AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype::text, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = CAST(:s AS regnamespace) ORDER BY 2""",
    "indexes": """
        SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = CAST(:s AS regnamespace) ORDER BY 1""",
}


async def catalog(conn: AsyncConnection, schema: str) -> dict[str, Any]:
    described: dict[str, Any] = {}
    for name, query in _CATALOG_QUERIES.items():
        rows = (await conn.execute(text(query), {"s": schema})).all()
        # The schema's own name is the one thing allowed to differ.
        described[name] = [tuple(str(v).replace(schema, "<schema>") for v in row) for row in rows]
    versions = await conn.execute(text(f"SELECT version_num FROM {quote_schema(schema)}.alembic_version"))
    described["versions"] = list(versions.scalars())
    return described


async def run_script(conn: AsyncConnection, script: str) -> None:
    await (await driver_of(conn)).execute(script)


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex}"


async def test_fast_path_builds_what_the_migrations_build(engine: AsyncEngine) -> None:
    by_migrations, by_script = new_schema(), new_schema()
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {quote_schema(by_migrations)}"))
        await conn.run_sync(upgrade_tenant_schema, by_migrations)
        await run_script(conn, tenant_schema_script(by_script))
        migrated = await catalog(conn, by_migrations)
        assert migrated["versions"] == [tenant_head_revision()]
        assert {"projects", "alembic_version"} <= {name for name, kind in migrated["relations"] if kind == "r"}
        assert await catalog(conn, by_script) == migrated
        # Alembic reads the stamp: upgrading the fast path's schema is a no-op.
        await conn.run_sync(upgrade_tenant_schema, by_script)
        assert await catalog(conn, by_script) == migrated
        await conn.execute(text(f"DROP SCHEMA {quote_schema(by_migrations)} CASCADE"))
        await conn.execute(text(f"DROP SCHEMA {quote_schema(by_script)} CASCADE"))


async def test_script_is_all_or_nothing(engine: AsyncEngine) -> None:
    """A script that fails midway (here: its schema exists already) leaves the
    transaction failed and nothing of its own behind."""
    schema = new_schema()
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {quote_schema(schema)}"))
    try:
        with pytest.raises(asyncpg.DuplicateSchemaError):
            async with engine.begin() as conn:
                await run_script(conn, tenant_schema_script(schema))
        async with engine.connect() as conn:
            tables = await conn.scalar(
                text("SELECT count(*) FROM pg_class WHERE relnamespace = CAST(:s AS regnamespace)"), {"s": schema}
            )
        assert tables == 0
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE"))

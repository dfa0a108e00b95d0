"""Tenant-scoped code gets a session already in the call's transaction, which
refuses to begin, commit or roll back: it could only pretend to."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenant_api.call_transaction import CallTransactionError, call_transaction, open_transaction, unscoped_connection
from tenantry.db.models import Project
from tests.stack import Stack
from tests.test_tenant_gate import register_active


async def test_the_call_session_refuses_to_begin_or_end_a_transaction(stack: Stack, engine: AsyncEngine) -> None:
    """Each refusal says why and leaves the call intact: its write, added and
    never flushed by hand, commits with the call."""
    tenant = await register_active(stack.stubs)
    project_id = uuid.uuid4()
    async with engine.connect() as conn:
        driver = await unscoped_connection(conn)
        await open_transaction(conn, driver)
        async with call_transaction(conn, driver, tenant.schema_name) as session:
            session.add(Project(id=project_id, name="kept", description=""))
            with pytest.raises(CallTransactionError, match=r"session\.begin\(\) in a tenant-scoped call"):
                session.begin()
            with pytest.raises(CallTransactionError, match=r"session\.begin_nested\(\)"):
                session.begin_nested()
            with pytest.raises(CallTransactionError, match=r"session\.commit\(\)"):
                await session.commit()
            with pytest.raises(CallTransactionError, match=r"session\.rollback\(\)"):
                await session.rollback()
            assert driver.is_in_transaction()
        assert not driver.is_in_transaction()
    async with engine.connect() as other:
        name = await other.scalar(
            text(f'SELECT name FROM "{tenant.schema_name}".projects WHERE id = :id'), {"id": project_id}
        )
    assert name == "kept"

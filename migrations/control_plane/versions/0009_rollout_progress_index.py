"""A fleet rollout's succeeded count is its SCHEMA_MIGRATED events: an index
to count them by operation, so the tenants' transactions need not update the
operation's row (design.md, "Tenant schema migrations across the fleet").

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_tenant_events_schema_migrated_operation",
        "tenant_events",
        ["operation"],
        postgresql_where=sa.text("type = 'SCHEMA_MIGRATED'"),
    )


def downgrade() -> None:
    op.drop_index("ix_tenant_events_schema_migrated_operation", "tenant_events")

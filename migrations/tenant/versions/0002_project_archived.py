"""Tenant schema: projects.archived (ProjectService's `archived` field).

Expand-only: a column with a constant default is a catalog change in
PostgreSQL 11+ (no table rewrite), so the rollout holds each tenant's lock
for milliseconds. An API build that reads the column declares t0002 as the
oldest tenant revision it serves (tenant_api.tenant_gate).

Revision ID: t0002
Revises: t0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "t0002"
down_revision: str | None = "t0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    return op.get_context().version_table_schema


def upgrade() -> None:
    op.add_column(
        "projects",
        sa.Column("archived", sa.Boolean(), server_default=sa.false(), nullable=False),
        schema=_schema(),
    )


def downgrade() -> None:
    op.drop_column("projects", "archived", schema=_schema())

"""Tenant schema: projects.

Revision ID: t0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "t0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def _schema() -> str | None:
    # The tenant env keeps the version table in the tenant's schema: the same
    # schema every table of this lineage belongs in.
    return op.get_context().version_table_schema


def upgrade() -> None:
    schema = _schema()
    op.create_table(
        "projects",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("create_time", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("update_time", TS, server_default=sa.func.now(), nullable=False),
        schema=schema,
    )
    op.create_index("ix_projects_create_time_id", "projects", ["create_time", "id"], schema=schema)


def downgrade() -> None:
    op.drop_table("projects", schema=_schema())

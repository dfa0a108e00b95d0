"""Index for ListOperations' unfiltered newest-first keyset pages.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_workflow_executions_create_time_workflow_id", "workflow_executions", ["create_time", "workflow_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_executions_create_time_workflow_id", table_name="workflow_executions")

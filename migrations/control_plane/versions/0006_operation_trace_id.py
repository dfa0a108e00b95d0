"""workflow_executions.trace_id: the OpenTelemetry trace id of the request that
created the operation ("" when the API was not tracing).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: no table rewrite, the existing rows read "".
    op.add_column("workflow_executions", sa.Column("trace_id", sa.String(length=32), server_default="", nullable=False))


def downgrade() -> None:
    op.drop_column("workflow_executions", "trace_id")

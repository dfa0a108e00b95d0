"""Fleet rollouts: a MIGRATE operation has no tenant, counts its progress and
records each failed tenant with its reason; at most one is open at a time.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_MIGRATE = "state IN ('PENDING', 'RUNNING') AND kind = 'MIGRATE'"


def upgrade() -> None:
    op.alter_column("workflow_executions", "tenant_id", nullable=True)
    op.create_check_constraint(
        "ck_workflow_executions_tenant_unless_fleet", "workflow_executions", "tenant_id IS NOT NULL OR kind = 'MIGRATE'"
    )
    for name in ("progress_total", "progress_succeeded", "progress_failed"):
        op.add_column("workflow_executions", sa.Column(name, sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("workflow_executions", sa.Column("target_revision", sa.String(32), server_default="", nullable=False))
    # One open fleet rollout at a time (`tenantry-migrate tenants` re-attaches to it).
    op.create_index(
        "uq_workflow_executions_open_migrate",
        "workflow_executions",
        ["kind"],
        unique=True,
        postgresql_where=sa.text(OPEN_MIGRATE),
    )
    op.create_table(
        "rollout_failures",
        sa.Column("workflow_id", sa.String(200), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflow_executions.workflow_id"],
            name="fk_rollout_failures_workflow_id_workflow_executions",
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_rollout_failures_tenant_id_tenants"),
        sa.PrimaryKeyConstraint("workflow_id", "tenant_id", name="pk_rollout_failures"),
    )


def downgrade() -> None:
    op.drop_table("rollout_failures")
    op.drop_index("uq_workflow_executions_open_migrate", "workflow_executions")
    op.drop_column("workflow_executions", "target_revision")
    for name in ("progress_failed", "progress_succeeded", "progress_total"):
        op.drop_column("workflow_executions", name)
    op.drop_constraint("ck_workflow_executions_tenant_unless_fleet", "workflow_executions", type_="check")
    op.execute("DELETE FROM workflow_executions WHERE tenant_id IS NULL")
    op.alter_column("workflow_executions", "tenant_id", nullable=False)

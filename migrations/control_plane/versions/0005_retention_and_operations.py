"""Retention and many operations per tenant: slugs unique among tenants not
DELETED, the state an undelete restores, at most one open lifecycle operation
per tenant, and the MIGRATE and MOVE operation kinds.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "('PROVISION', 'DELETE')"
KINDS = "('PROVISION', 'DELETE', 'MIGRATE', 'MOVE')"
OPEN_LIFECYCLE = "state IN ('PENDING', 'RUNNING') AND kind IN ('PROVISION', 'DELETE', 'MOVE')"


def upgrade() -> None:
    op.add_column("tenants", sa.Column("state_before_delete", sa.String(16), nullable=True))
    # A purged (DELETED) tenant no longer holds its slug.
    op.drop_constraint("uq_tenants_slug", "tenants", type_="unique")
    op.create_index("uq_tenants_slug", "tenants", ["slug"], unique=True, postgresql_where=sa.text("state <> 'DELETED'"))
    op.create_index("ix_tenants_slug_update_time", "tenants", ["slug", "update_time"])
    op.execute(
        "ALTER TABLE workflow_executions DROP CONSTRAINT ck_workflow_executions_kind, "
        f"ADD CONSTRAINT ck_workflow_executions_kind CHECK (kind IN {KINDS})"
    )
    # Before this revision a deletion left the tenant's provisioning operation
    # open until its workflow was cancelled: the deletion supersedes it.
    op.execute(
        """
        UPDATE workflow_executions p SET state = 'CANCELLED', end_time = now(), update_time = now()
        WHERE p.kind = 'PROVISION' AND p.state IN ('PENDING', 'RUNNING')
          AND EXISTS (SELECT 1 FROM workflow_executions d
                      WHERE d.tenant_id = p.tenant_id AND d.kind = 'DELETE' AND d.state IN ('PENDING', 'RUNNING'))
        """
    )
    op.create_index(
        "uq_workflow_executions_open_lifecycle",
        "workflow_executions",
        ["tenant_id"],
        unique=True,
        postgresql_where=sa.text(OPEN_LIFECYCLE),
    )


def downgrade() -> None:
    op.drop_index("uq_workflow_executions_open_lifecycle", "workflow_executions")
    op.execute(
        "ALTER TABLE workflow_executions DROP CONSTRAINT ck_workflow_executions_kind, "
        f"ADD CONSTRAINT ck_workflow_executions_kind CHECK (kind IN {OLD_KINDS})"
    )
    op.drop_index("ix_tenants_slug_update_time", "tenants")
    op.drop_index("uq_tenants_slug", "tenants")
    op.create_unique_constraint("uq_tenants_slug", "tenants", ["slug"])
    op.drop_column("tenants", "state_before_delete")

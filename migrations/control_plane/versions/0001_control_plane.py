"""Control plane: users, tenants, memberships, workflow executions.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_STATES = "('CREATING', 'ACTIVE', 'FAILED', 'DELETING', 'DELETED')"
OPERATION_STATES = "('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')"
OPERATION_KINDS = "('PROVISION', 'DELETE')"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("display_name", sa.String(100), nullable=False),
        sa.Column("create_time", TS, server_default=sa.func.now(), nullable=False),
    )
    op.create_index("uq_users_lower_email", "users", [sa.text("lower(email)")], unique=True)

    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("slug", sa.String(40), nullable=False, unique=True),
        sa.Column("display_name", sa.String(100), nullable=False),
        sa.Column("admin_user_id", sa.Uuid(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_message", sa.Text(), server_default="", nullable=False),
        sa.Column("schema_name", sa.String(63), nullable=False, unique=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("create_time", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("update_time", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("delete_time", TS, nullable=True),
        sa.Column("purge_time", TS, nullable=True),
        sa.CheckConstraint(f"state IN {TENANT_STATES}", name="state"),
        sa.CheckConstraint("schema_name = 't_' || replace(id::text, '-', '')", name="schema_name_from_id"),
    )
    op.create_index("ix_tenants_admin_user_id", "tenants", ["admin_user_id"])
    op.create_index("ix_tenants_create_time_id", "tenants", ["create_time", "id"])

    op.create_table(
        "tenant_memberships",
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("create_time", TS, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'member')", name="role"),
    )
    op.create_index("ix_tenant_memberships_user_id", "tenant_memberships", ["user_id"])

    op.create_table(
        "workflow_executions",
        sa.Column("workflow_id", sa.String(200), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error_message", sa.Text(), server_default="", nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=True, unique=True),
        sa.Column("create_time", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("update_time", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("start_time", TS, nullable=True),
        sa.Column("end_time", TS, nullable=True),
        sa.CheckConstraint(f"state IN {OPERATION_STATES}", name="state"),
        sa.CheckConstraint(f"kind IN {OPERATION_KINDS}", name="kind"),
    )
    op.create_index(
        "ix_workflow_executions_tenant_id_create_time",
        "workflow_executions",
        ["tenant_id", "create_time"],
    )
    op.create_index("ix_workflow_executions_state_create_time", "workflow_executions", ["state", "create_time"])
    # WaitOperation listens on this channel instead of polling the table.
    op.execute(
        """
        CREATE FUNCTION notify_operation_done() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('tenantry_operation_done', NEW.workflow_id);
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER workflow_executions_notify_done
        AFTER UPDATE OF state ON workflow_executions
        FOR EACH ROW WHEN (NEW.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
                           AND OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION notify_operation_done()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER workflow_executions_notify_done ON workflow_executions")
    op.execute("DROP FUNCTION notify_operation_done()")
    op.drop_table("workflow_executions")
    op.drop_table("tenant_memberships")
    op.drop_table("tenants")
    op.drop_table("users")

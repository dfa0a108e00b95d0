"""tenants.shard: the database holding the tenant's schema (a TENANTRY_SHARDS
name; every existing tenant is on `default`, the control plane's database
unless configured otherwise), tenants.moving: set only during a move's final
copy-and-switch, and a MOVE operation's source_shard and target_shard.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Constant defaults: no table rewrite.
    op.add_column("tenants", sa.Column("shard", sa.String(length=31), server_default="default", nullable=False))
    op.add_column("tenants", sa.Column("moving", sa.Boolean(), server_default=sa.false(), nullable=False))
    # The name the models' naming convention gives (ck_<table>_<name>).
    op.execute("ALTER TABLE tenants ADD CONSTRAINT ck_tenants_shard_name CHECK (shard ~ '^[a-z][a-z0-9_-]{0,30}$')")
    for column in ("source_shard", "target_shard"):
        op.add_column("workflow_executions", sa.Column(column, sa.String(length=31), server_default="", nullable=False))
    op.create_index("ix_tenants_shard_live", "tenants", ["shard"], postgresql_where=sa.text("state <> 'DELETED'"))


def downgrade() -> None:
    op.drop_index("ix_tenants_shard_live", table_name="tenants")
    op.drop_column("workflow_executions", "target_shard")
    op.drop_column("workflow_executions", "source_shard")
    op.execute("ALTER TABLE tenants DROP CONSTRAINT ck_tenants_shard_name")
    op.drop_column("tenants", "moving")
    op.drop_column("tenants", "shard")

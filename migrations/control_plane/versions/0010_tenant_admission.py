"""The control plane's database is a shard too (the default one): it gets the
shards' admission table (tenantry.db.admission), which suspend and delete
fence for tenants on it as for tenants anywhere else.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

from tenantry.db.admission import ADMISSION_TABLE, CREATE_ADMISSION_TABLE

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(CREATE_ADMISSION_TABLE)


def downgrade() -> None:
    op.execute(f"DROP TABLE IF EXISTS public.{ADMISSION_TABLE}")

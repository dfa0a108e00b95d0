"""Tenant lifecycle: labels, schema_version, the SUSPENDED state, request records.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_TENANT_STATES = "('CREATING', 'ACTIVE', 'FAILED', 'DELETING', 'DELETED')"
TENANT_STATES = "('CREATING', 'ACTIVE', 'FAILED', 'DELETING', 'DELETED', 'SUSPENDED')"


def upgrade() -> None:
    op.add_column("tenants", sa.Column("labels", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False))
    op.add_column("tenants", sa.Column("schema_version", sa.String(32), server_default="", nullable=False))
    op.execute(
        f"ALTER TABLE tenants DROP CONSTRAINT ck_tenants_state, "
        f"ADD CONSTRAINT ck_tenants_state CHECK (state IN {TENANT_STATES})"
    )
    # Tenants provisioned before the column: their schema's own version stamp.
    op.execute(
        """
        DO $$
        DECLARE t record; v text;
        BEGIN
            FOR t IN SELECT tn.id, tn.schema_name FROM tenants tn
                     WHERE tn.state IN ('ACTIVE', 'DELETING')
                       AND to_regclass(quote_ident(tn.schema_name) || '.alembic_version') IS NOT NULL
            LOOP
                EXECUTE format('SELECT max(version_num) FROM %I.alembic_version', t.schema_name) INTO v;
                UPDATE tenants SET schema_version = coalesce(v, '') WHERE id = t.id;
            END LOOP;
        END $$
        """
    )
    # Results of mutating calls by their request_id (AIP-155), written in the
    # call's transaction so a repeat returns the original response.
    op.create_table(
        "request_records",
        sa.Column("request_id", sa.Uuid(), primary_key=True),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_request_records_tenant_id", "request_records", ["tenant_id"])
    # Label filters (`label.<key>=<value>`) are jsonb containment.
    op.create_index("ix_tenants_labels", "tenants", ["labels"], postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_tenants_labels", "tenants")
    op.drop_table("request_records")
    op.execute(
        f"ALTER TABLE tenants DROP CONSTRAINT ck_tenants_state, "
        f"ADD CONSTRAINT ck_tenants_state CHECK (state IN {OLD_TENANT_STATES})"
    )
    op.drop_column("tenants", "schema_version")
    op.drop_column("tenants", "labels")

"""Audit log and change feed: tenant_events, its sequence counter, operation actors.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TYPES = (
    "('REGISTERED', 'ACTIVATED', 'PROVISIONING_FAILED', 'PROVISIONING_RETRIED', 'UPDATED', 'SUSPENDED', "
    "'RESUMED', 'DELETED', 'UNDELETED', 'PURGED', 'SCHEMA_MIGRATED', 'MOVED')"
)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("workflow_executions", sa.Column("actor", sa.Text(), server_default="", nullable=False))
    # One row: the last sequence number handed out. Taking the next number
    # updates (and so locks) this row until the transaction ends, which makes
    # numbers commit in the order they are handed out: a reader that has seen
    # N can never later find a smaller number committed (bigserial cannot
    # promise that: concurrent transactions commit out of nextval order).
    op.create_table(
        "tenant_event_counter",
        sa.Column("id", sa.Boolean(), primary_key=True, server_default=sa.true()),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.CheckConstraint("id", name="one_row"),
    )
    op.execute("INSERT INTO tenant_event_counter (id, last_sequence) VALUES (true, 0)")
    op.create_table(
        "tenant_events",
        sa.Column("sequence", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("operation", sa.String(200), server_default="", nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=True),
        sa.Column("event_time", TS, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(f"type IN {EVENT_TYPES}", name="type"),
    )
    op.create_index("ix_tenant_events_tenant_id_sequence", "tenant_events", ["tenant_id", "sequence"])
    # Watchers wake on this channel; the payload is the sequence number.
    op.execute(
        """
        CREATE FUNCTION notify_tenant_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('tenantry_tenant_event', NEW.sequence::text);
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER tenant_events_notify
        AFTER INSERT ON tenant_events
        FOR EACH ROW EXECUTE FUNCTION notify_tenant_event()
        """
    )
    # Append-only: the audit log is never rewritten, whoever connects.
    op.execute(
        """
        CREATE FUNCTION refuse_tenant_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'tenant_events is append-only' USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER tenant_events_append_only
        BEFORE UPDATE OR DELETE ON tenant_events
        FOR EACH ROW EXECUTE FUNCTION refuse_tenant_event_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER tenant_events_append_only ON tenant_events")
    op.execute("DROP FUNCTION refuse_tenant_event_change()")
    op.execute("DROP TRIGGER tenant_events_notify ON tenant_events")
    op.execute("DROP FUNCTION notify_tenant_event()")
    op.drop_table("tenant_events")
    op.drop_table("tenant_event_counter")
    op.drop_column("workflow_executions", "actor")

"""Alembic environment for one tenant's schema.

Runs on the caller's connection and inside the caller's transaction, so the
schema, its tables and the version stamp (kept in the tenant's own schema)
commit together or not at all.
"""

from alembic import context
from tenantry.db.models import TenantBase

config = context.config
context.configure(
    connection=config.attributes["connection"],
    target_metadata=TenantBase.metadata,
    version_table_schema=config.attributes["tenant_schema"],
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment for one tenant's schema.

Online: runs on the caller's connection and inside the caller's transaction,
so the schema, its tables and the version stamp (kept in the tenant's own
schema) commit together or not at all.

Offline (`--sql`, tenantry.migrations.render_tenant_step): renders a revision
step's SQL once for a placeholder schema name, without BEGIN/COMMIT (the
rollout runs it inside each tenant's own transaction).
"""

from alembic import context
from tenantry.db.models import TenantBase

config = context.config
if context.is_offline_mode():
    context.configure(
        dialect_name="postgresql",
        target_metadata=TenantBase.metadata,
        version_table_schema=config.attributes["tenant_schema"],
        literal_binds=True,
        transactional_ddl=False,
    )
    context.run_migrations()
else:
    context.configure(
        connection=config.attributes["connection"],
        target_metadata=TenantBase.metadata,
        version_table_schema=config.attributes["tenant_schema"],
    )
    with context.begin_transaction():
        context.run_migrations()

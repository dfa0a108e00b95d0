"""Each shard database's own record of which of its tenants may serve
(`public.tenant_admission`), so the tenant gate admits a call for a tenant on
another database than the control plane's in ONE round trip to that shard,
as it admits a control-plane-local tenant's in one round trip there.

The control plane's `tenants` row stays the truth; a row here is a promise
about it, kept by two rules:

- a row says `admit` only if the control-plane row at `version` said the
  tenant may serve there (ACTIVE, placed on this shard, not moving). The gate
  writes it (`admit_statement`) after admitting a call by the control-plane
  row, and only over an older `version`;
- every change that takes that away (suspend, delete, a move's switch away)
  first writes a FENCE here (`fence`: not admitted, at the version the change
  will commit), commits it, and only then commits the control-plane change
  (the two-database protocol of tenantry.db.shards.shard_transaction). A
  stale admit, computed from a row read before the change, carries a lower
  version and loses to the fence, whichever commits first.

So a call the control plane would refuse is never admitted here; a change
that fails between its two commits leaves a fence over a tenant that still
may serve: its calls take the control-plane path (slower, still right) until
its next change. Changes that only widen admission (resume, undelete,
provisioning, a schema upgrade) write nothing here: the gate learns them from
the control plane. The gate checks the schema revision it needs itself
(`schema_version`, as the control plane recorded it when the row was written;
revisions only grow). A purged tenant's fence stays, as its control-plane row
does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import TextClause, text

from tenantry.db.tenants import TENANT_REVISION_PATTERN

ADMISSION_TABLE = "tenant_admission"

# Every shard database has it: the control plane's through its alembic lineage
# (0010), any other through `tenantry-migrate` (tenantry.migrate.grant_privileges).
CREATE_ADMISSION_TABLE = f"""
CREATE TABLE IF NOT EXISTS public.{ADMISSION_TABLE} (
    tenant_id uuid PRIMARY KEY,
    -- The control-plane tenants.version this row was written for.
    version bigint NOT NULL,
    admit boolean NOT NULL,
    schema_version varchar(32) NOT NULL DEFAULT ''
)
"""


def fence(tenant_id: uuid.UUID, version: int) -> str:
    """Not admitted from `version` on (the version the restrictive change
    commits on the control plane). Always wins over an admit: a fence is
    never wrong, only slower. Plain SQL (the move runs it on the driver, in
    one round trip with its rename): its only values are a uuid.UUID's
    canonical text and an int."""
    if not isinstance(tenant_id, uuid.UUID) or not isinstance(version, int):
        raise TypeError("a fence takes a uuid.UUID and an int")
    return (
        f"INSERT INTO public.{ADMISSION_TABLE} AS a (tenant_id, version, admit) "
        f"VALUES ('{tenant_id}', {version:d}, false) ON CONFLICT (tenant_id) DO UPDATE "
        "SET version = GREATEST(a.version, EXCLUDED.version), admit = false"
    )


def admit_statement(tenant_id: uuid.UUID, version: int, schema_version: str) -> TextClause:
    """Admitted, as the control-plane row at `version` said: only over an
    older row, or an admitted one at the same version (a newer schema
    revision). A fence at this version or later stays."""
    return text(
        f"INSERT INTO public.{ADMISSION_TABLE} AS a (tenant_id, version, admit, schema_version) "
        "VALUES (:tenant_id, :version, true, :schema_version) ON CONFLICT (tenant_id) DO UPDATE "
        "SET version = EXCLUDED.version, admit = true, schema_version = EXCLUDED.schema_version "
        "WHERE a.version < EXCLUDED.version OR (a.version = EXCLUDED.version AND a.admit)"
    ).bindparams(tenant_id=tenant_id, version=version, schema_version=schema_version)


def begin_if_admitted(oldest_revision: str) -> Callable[[uuid.UUID], str]:
    """The statement that opens a call's transaction on a shard and checks
    this shard admits the tenant with its schema at `oldest_revision` or later,
    in one round trip ("SELECT 1" or "SELECT 0", as
    tenantry.db.tenants.begin_if_active). Rendered once; per call only a
    uuid.UUID's canonical text goes in."""
    if not TENANT_REVISION_PATTERN.fullmatch(oldest_revision):
        raise ValueError(f"not a tenant revision id: {oldest_revision!r}")
    checks = f"AND admit AND schema_version >= '{oldest_revision}'"

    def for_tenant(tenant_id: uuid.UUID) -> str:
        if not isinstance(tenant_id, uuid.UUID):
            raise TypeError("tenant_id must be a uuid.UUID")
        return f"BEGIN; SELECT 1 FROM public.{ADMISSION_TABLE} WHERE tenant_id = '{tenant_id}' {checks}"

    return for_tenant

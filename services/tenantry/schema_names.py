"""Tenant schema names: derived from the tenant id, never from user input.

The one definition of the pattern (`t_` + the id's 32 hex digits): Python
derives names with `schema_name_for`, PostgreSQL with `SCHEMA_NAME_FROM_ID_SQL`
(the tenants CHECK constraint), and both recognise them with
`SCHEMA_NAME_REGEX` (a POSIX-style regular expression both dialects read alike).
"""

from __future__ import annotations

import re
import uuid

SCHEMA_PREFIX = "t_"
# Anchored; `[0-9a-f]{32}` is `uuid.UUID.hex`.
SCHEMA_NAME_REGEX = f"^{SCHEMA_PREFIX}[0-9a-f]{{32}}$"
# `schema_name_for` in SQL, over a row's `id` column.
SCHEMA_NAME_FROM_ID_SQL = f"'{SCHEMA_PREFIX}' || replace(id::text, '-', '')"
_SCHEMA_RE = re.compile(SCHEMA_NAME_REGEX)


def schema_name_for(tenant_id: uuid.UUID) -> str:
    # 34 bytes: no quoting issues, no collisions, far below the 63-byte limit.
    return f"{SCHEMA_PREFIX}{tenant_id.hex}"


def is_tenant_schema_name(name: str) -> bool:
    return _SCHEMA_RE.fullmatch(name) is not None


def quote_schema(name: str) -> str:
    """Quoted identifier for DDL; refuses anything that is not a tenant schema name."""
    if not is_tenant_schema_name(name):
        raise ValueError(f"not a tenant schema name: {name!r}")
    return f'"{name}"'

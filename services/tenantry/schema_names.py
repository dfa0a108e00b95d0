"""Tenant schema names: derived from the tenant id, never from user input."""

from __future__ import annotations

import re
import uuid

SCHEMA_PREFIX = "t_"
_SCHEMA_RE = re.compile(r"^t_[0-9a-f]{32}$")


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

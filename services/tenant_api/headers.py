"""Request metadata the API reads, and how it reads one value."""

from __future__ import annotations

from collections.abc import Iterable

# Which tenant a tenant-scoped call is for: one of the two (see the tenant gate).
TENANT_ID_HEADER = "x-tenant-id"
TENANT_SLUG_HEADER = "x-tenant-slug"
# `Bearer <JWT>`: who is calling (see tenant_api.authentication).
AUTHORIZATION_HEADER = "authorization"
# The caller's id for the call, logged with it (one is made up when absent).
REQUEST_ID_HEADER = "x-request-id"


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """The first value of `key` in `metadata`, as text; None when absent."""
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None

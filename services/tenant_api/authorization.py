"""What a caller may do: each RPC declares the one permission it needs in the
contract (`option (tenantry.v1.permission) = "...";`), nowhere else. A method
of ours that declares none is refused for everybody (fail closed)."""

from __future__ import annotations

import uuid
from functools import cache

import grpc
from google.protobuf import descriptor_pool

from tenant_api.authentication import Principal
from tenant_api.errors import ApiError
from tenant_api.validation import parse_uuid

# Importing the generated modules registers our services in the default pool.
from tenantry.v1 import (
    event_service_pb2,  # noqa: F401
    operation_service_pb2,  # noqa: F401
    options_pb2,
    project_service_pb2,  # noqa: F401
    tenant_service_pb2,  # noqa: F401
)

# Not ours: answered without a principal (the design's only exceptions).
PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)


def service_of(method: str) -> str:
    """`/package.Service/Method` -> `package.Service`."""
    return method.lstrip("/").partition("/")[0]


def is_public(method: str) -> bool:
    return service_of(method) in PUBLIC_SERVICES


@cache
def required_permission(method: str) -> str | None:
    """The permission `method` (the gRPC path) declares, or None when it
    declares none or is not in the descriptor pool. Read once per method."""
    service_name, _, method_name = method.lstrip("/").partition("/")
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(f"{service_name}.{method_name}")
    except KeyError:
        return None
    permission: object = descriptor.GetOptions().Extensions[options_pb2.permission]  # type: ignore[index]
    return str(permission) or None


def permission_missing(permission: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_MISSING",
        f"the token does not grant {permission!r}",
        {"permission": permission},
    )


def authorize(principal: Principal, method: str) -> str:
    """Returns the permission used, or raises PERMISSION_DENIED."""
    permission = required_permission(method)
    if permission is None:
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_MISSING",
            f"{method} declares no permission and is refused for everybody",
            {"method": method},
        )
    if not principal.grants(permission):
        raise permission_missing(permission)
    return permission


def tenant_not_permitted(tenant_id: uuid.UUID) -> ApiError:
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_NOT_PERMITTED",
        "the token is bound to another tenant",
        {"token_tenant_id": str(tenant_id)},
    )


def check_tenant(principal: Principal, tenant_id_header: str | None, tenant_slug_header: str | None) -> None:
    """For a tenant-scoped call: a tenant-bound token may name only its own
    tenant, and must name it by id (a slug could only be checked after a
    lookup, and a refused caller must learn nothing about other tenants).
    Needs no database; runs before the tenant gate."""
    bound = principal.tenant_id
    if bound is None:
        return
    if tenant_id_header:
        if parse_uuid(tenant_id_header) != bound:
            raise tenant_not_permitted(bound)
    elif tenant_slug_header:
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            "TENANT_NOT_PERMITTED",
            "a tenant-bound token must name its tenant in x-tenant-id",
            {"token_tenant_id": str(bound)},
        )
    # Neither header: the tenant gate refuses the call (TENANT_REQUIRED) without a lookup.

"""A typed client for the Tenantry gRPC API.

    async with AsyncTenantryClient("api.example.com:443", token=get_token) as client:
        tenant = await client.register_and_wait("acme", "Acme", "ops@acme.example")

Messages and stubs of the contract: tenantry_client.v1 (generated)."""

from tenantry_client._channel import BearerToken, RetryPolicy, Tls, TokenSource
from tenantry_client.aio import AsyncTenantryClient
from tenantry_client.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OperationFailed,
    PermissionDenied,
    ResourceExhausted,
    TenantryError,
    Unauthenticated,
    Unavailable,
)
from tenantry_client.sync import TenantryClient

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncTenantryClient",
    "BearerToken",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "OperationFailed",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "TenantryClient",
    "TenantryError",
    "Tls",
    "TokenSource",
    "Unauthenticated",
    "Unavailable",
]

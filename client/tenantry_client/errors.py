"""Typed errors. Every failed call raises a `TenantryError` (a subclass per
status code) carrying what the server put in `grpc-status-details-bin`: the
ErrorInfo reason and metadata, BadRequest field violations and RetryInfo."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from tenantry_client.v1 import operation_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class TenantryError(Exception):
    """A call failed. `reason` is the ErrorInfo reason ("" when the status has
    none, e.g. a transport failure the client itself reports)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name} {reason or '-'}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        # RetryInfo.retry_delay in seconds, when the server suggested one.
        self.retry_delay = retry_delay

    @property
    def violations(self) -> dict[str, str]:
        """Field violations as {field: description}."""
        return {v.field: v.description for v in self.field_violations}


class InvalidArgument(TenantryError):
    pass


class NotFound(TenantryError):
    pass


class AlreadyExists(TenantryError):
    pass


class FailedPrecondition(TenantryError):
    pass


class Aborted(TenantryError):
    pass


class ResourceExhausted(TenantryError):
    pass


class Unavailable(TenantryError):
    pass


class Unauthenticated(TenantryError):
    pass


class PermissionDenied(TenantryError):
    pass


class DeadlineExceeded(TenantryError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[TenantryError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


class OperationFailed(Exception):
    """An operation ended FAILED or CANCELLED. The server records why as
    "<REASON>: <message>" in error_message: `reason` is the stable REASON
    (e.g. PROVISIONING_FAILED, PROVISIONING_TIMED_OUT; "" if there is none),
    `message` the rest; `operation` is the final Operation."""

    def __init__(self, operation: operation_pb2.Operation) -> None:
        state = operation_pb2.OperationState.Name(operation.state)
        super().__init__(f"operation {operation.name} ended {state}: {operation.error_message}")
        self.operation = operation
        self.state = operation.state
        head, sep, rest = operation.error_message.partition(": ")
        if sep and _REASON.fullmatch(head):
            self.reason, self.message = head, rest
        else:
            self.reason, self.message = "", operation.error_message


_REASON = re.compile(r"[A-Z][A-Z0-9_]*")


def _status_details(trailing: Any) -> bytes | None:
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def error_from_rpc(error: grpc.RpcError) -> TenantryError:
    """The typed error for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    call: Any = error
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    kwargs: dict[str, Any] = {}
    raw = _status_details(call.trailing_metadata())
    if raw is not None:
        status = status_pb2.Status.FromString(raw)
        violations: list[FieldViolation] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                kwargs.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                kwargs["retry_delay"] = retry.retry_delay.ToTimedelta().total_seconds()
        kwargs["field_violations"] = violations
    return _BY_CODE.get(code, TenantryError)(code, message, **kwargs)

"""Domain errors. Code raises these; one interceptor turns them into statuses
with google.rpc.ErrorInfo (and BadRequest for invalid fields)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "tenantry.v1"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass
class ApiError(Exception):
    code: grpc.StatusCode
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()
    # Seconds a client should wait before retrying (google.rpc.RetryInfo).
    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self) -> grpc.Status:
        details = [error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=dict(self.metadata))]
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in self.violations
                    ]
                )
            )
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromTimedelta(timedelta(seconds=self.retry_after))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        status = status_pb2.Status(code=_CODES[self.code], message=self.message, details=packed)
        return rpc_status.to_status(status)


_CODES = {code: getattr(code_pb2, code.name) for code in grpc.StatusCode}


def invalid_fields(violations: Sequence[FieldViolation]) -> ApiError:
    fields = ", ".join(v.field for v in violations)
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        f"invalid field(s): {fields}",
        {"fields": fields},
        violations,
    )


def invalid_field(name: str, description: str) -> ApiError:
    return invalid_fields([FieldViolation(name, description)])


def not_found(reason: str, message: str, **metadata: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, reason, message, metadata)


def already_exists(reason: str, message: str, **metadata: str) -> ApiError:
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, reason, message, metadata)


def failed_precondition(reason: str, message: str, **metadata: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, metadata)


def unavailable(reason: str, message: str, *, retry_after: float | None = None, **metadata: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, reason, message, metadata, retry_after=retry_after)


def resource_exhausted(reason: str, message: str, **metadata: str) -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message, metadata)


def aborted(reason: str, message: str, **metadata: str) -> ApiError:
    return ApiError(grpc.StatusCode.ABORTED, reason, message, metadata)

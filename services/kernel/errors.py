"""Domain errors and their google.rpc.Status form.

Domain code raises these; one interceptor turns them into a status with details, so gRPC
clients and REST clients (through Envoy's convert_grpc_status) see the same structured error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "energymesh.io"


class DomainError(Exception):
    """Base of the errors a handler may raise on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason = "ERROR_REASON_INTERNAL"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata or {}

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]

    def to_status(self) -> status_pb2.Status:
        code_value = self.code.value[0]
        return status_pb2.Status(code=code_value, message=self.message, details=self.details())

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "ERROR_REASON_INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[tuple[str, str]], message: str = "") -> None:
        self.violations = list(violations)
        summary = "; ".join(f"{field}: {desc}" for field, desc in self.violations)
        super().__init__(message or f"invalid request: {summary}")

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        return [*super().details(), packed]


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "ERROR_REASON_UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "ERROR_REASON_PERMISSION_DENIED"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "ERROR_REASON_NOT_FOUND"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ERROR_REASON_ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "ERROR_REASON_FAILED_PRECONDITION"


class Aborted(DomainError):
    code = grpc.StatusCode.ABORTED
    reason = "ERROR_REASON_ABORTED"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "ERROR_REASON_UNAVAILABLE"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "ERROR_REASON_RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        if self.retry_after_seconds is None:
            return super().details()
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=self.retry_after_seconds)
        )
        packed = any_pb2.Any()
        packed.Pack(retry)
        return [*super().details(), packed]

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after_seconds is None:
            return ()
        return (("retry-after", str(self.retry_after_seconds)),)


def internal_status(trace_id: str) -> status_pb2.Status:
    """What a client sees of an unexpected failure: no stack trace, just where to look."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason="ERROR_REASON_INTERNAL", domain=ERROR_DOMAIN, metadata={"trace_id": trace_id}
        )
    )
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (trace {trace_id})", details=[info]
    )


def is_uuid(value: str) -> bool:
    """A resource id in its canonical text form (36 characters)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


class Violations:
    """Collects field violations so a request reports all of its problems at once."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def check(self, condition: bool, field: str, description: str) -> None:
        if not condition:
            self.add(field, description)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

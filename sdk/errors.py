"""Exceptions raised by the Brinell SDK.

Users catch these instead of ``grpc.RpcError``, so code that calls the SDK never imports grpc
and keeps working if the transport changes. Each class matches one gRPC status code; the
control plane documents which codes each RPC returns (see ``proto/brinell/v1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "AlreadyExistsError",
    "CancelledError",
    "BrinellError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_rpc_error",
]


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, from a ``google.rpc.BadRequest`` status detail."""

    field: str
    description: str


class BrinellError(Exception):
    """Any failure reported by the control plane (or by the SDK before a call).

    ``code`` is the gRPC status name (``"NOT_FOUND"``); ``message`` is written for users.
    ``details`` holds structured field violations when the server sent them.
    """

    default_code: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code
        self.message: str = message
        self.details: tuple[FieldViolation, ...] = details

    @property
    def problems(self) -> list[str]:
        """The individual problems: the server joins every problem of a request with ``; ``."""
        return [p for p in self.message.split("; ") if p]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidArgumentError(BrinellError):
    """The request is malformed; ``problems`` lists every problem found."""

    default_code = "INVALID_ARGUMENT"


class NotFoundError(BrinellError):
    default_code = "NOT_FOUND"


class AlreadyExistsError(BrinellError):
    default_code = "ALREADY_EXISTS"


class FailedPreconditionError(BrinellError):
    """The resource is in a state that does not allow the operation (e.g. deleting a used one)."""

    default_code = "FAILED_PRECONDITION"


class UnavailableError(BrinellError):
    """The control plane cannot be reached; retrying later may succeed."""

    default_code = "UNAVAILABLE"


class DeadlineExceededError(BrinellError, TimeoutError):
    """A call or a wait ran out of time; also a ``TimeoutError`` so generic code catches it."""

    default_code = "DEADLINE_EXCEEDED"


class PermissionDeniedError(BrinellError):
    """The credential is valid but its role (or ownership) does not allow the operation."""

    default_code = "PERMISSION_DENIED"


class UnauthenticatedError(BrinellError):
    """No credential, or one the server refuses (unknown, expired, revoked, disabled user).

    Give a token with ``Client(token=...)``, ``BRINELL_TOKEN`` or ``brinell login``."""

    default_code = "UNAUTHENTICATED"


class CancelledError(BrinellError):
    """The call was cancelled on the client side (for example by closing the client)."""

    default_code = "CANCELLED"


class InternalError(BrinellError):
    """A bug or an unexpected failure in the control plane."""

    default_code = "INTERNAL"


_BY_CODE: dict[str, type[BrinellError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        UnavailableError,
        DeadlineExceededError,
        PermissionDeniedError,
        UnauthenticatedError,
        CancelledError,
        InternalError,
    )
}


def error_for_code(
    code: str, message: str, details: tuple[FieldViolation, ...] = ()
) -> BrinellError:
    """Builds the exception class that matches a status name; unknown names give the base."""
    cls = _BY_CODE.get(code, BrinellError)
    return cls(message, code=code, details=details)


def _field_violations(err: object) -> tuple[FieldViolation, ...]:
    """Reads ``google.rpc.BadRequest`` from ``grpc-status-details-bin``, when it can.

    The googleapis protos come with grpcio-status, which the bare SDK does not require, so a
    missing module just means no structured details (the message still lists every problem).
    """
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:
        return ()
    trailers = getattr(err, "trailing_metadata", None)
    if trailers is None:
        return ()
    try:
        metadata = trailers() or ()
    except Exception:  # a call object in a bad state: details are optional
        return ()
    raw = next((v for k, v in metadata if k == "grpc-status-details-bin"), None)
    if not isinstance(raw, bytes):
        return ()
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except Exception:  # malformed trailer: ignore rather than hide the real error
        return ()
    violations: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(
                FieldViolation(field=str(v.field), description=str(v.description))
                for v in bad.field_violations
            )
    return tuple(violations)


def from_rpc_error(err: BaseException) -> BrinellError:
    """Translates a ``grpc.RpcError`` (a ``grpc.Call``) into the matching SDK exception."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code_name = "UNKNOWN"
    if callable(code_fn):
        code = code_fn()
        name = getattr(code, "name", None)
        if isinstance(name, str):
            code_name = name
    message = ""
    if callable(details_fn):
        message = str(details_fn() or "")
    if not message:
        message = str(err) or code_name
    return error_for_code(code_name, message, _field_violations(err))

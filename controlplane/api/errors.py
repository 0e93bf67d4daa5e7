"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from ..domain.identity import PermissionDenied, Unauthenticated

log = logging.getLogger("brinell.controlplane.api")

CODES: dict[type[DomainError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

#: What every servicer method receives; requests and responses are typed by the method.
Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

Servicer = TypeVar("Servicer")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


# Status travels in trailers, which gRPC caps at 8 KiB (beyond that the client sees
# RESOURCE_EXHAUSTED "Stream removed" instead of the error): whatever a message quotes, the
# status stays well under that.
MAX_MESSAGE_CHARS = 1000
MAX_VIOLATIONS = 8
MAX_VIOLATION_CHARS = 250


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status(exc: DomainError) -> grpc.Status:
    code = next((CODES[c] for c in type(exc).__mro__ if c in CODES), grpc.StatusCode.INTERNAL)
    details: list[any_pb2.Any] = []
    if isinstance(exc, InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_cut(field, 100), description=_cut(p, MAX_VIOLATION_CHARS)
                )
                for field, p in exc.violations[:MAX_VIOLATIONS]
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    return rpc_status.to_status(
        status_pb2.Status(
            code=getattr(code_pb2, code.name),
            message=_cut(exc.message, MAX_MESSAGE_CHARS),
            details=details,
        )
    )


async def abort_with(context: Ctx, exc: DomainError) -> None:
    """Ends the call with the error's status (raises grpc.aio.AbortError)."""
    status = _status(exc)  # what abort_with_status (experimental, not in the stubs) does:
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _abort(context: Ctx, exc: Exception) -> None:
    if isinstance(exc, DomainError):
        await abort_with(context, exc)
    log.exception("internal error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def unary(
    fn: Callable[[Servicer, Req, Ctx], Awaitable[Resp]],
) -> Callable[[Servicer, Req, Ctx], Awaitable[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: Servicer, request: Req, context: Ctx) -> Resp:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc

    return wrapper


def streaming(
    fn: Callable[[Servicer, Req, Ctx], AsyncIterator[Resp]],
) -> Callable[[Servicer, Req, Ctx], AsyncIterator[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: Servicer, request: Req, context: Ctx) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return wrapper

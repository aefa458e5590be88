"""The errors every FleetClient call raises instead of ``grpc.RpcError``.

    FleetError(message, code)     base; ``message`` is the server's status details, verbatim
    ├── InvalidArgument           the request is malformed (the message names the field)
    ├── FailedPrecondition        the request is well formed but not allowed in this state
    ├── NotFound                  no such job, attempt, dataplane or policy version
    ├── AlreadyExists
    ├── Unauthenticated           missing or bad credentials
    ├── PermissionDenied
    ├── ResourceExhausted         quota or rate limit
    ├── Unavailable               the control plane cannot be reached (or is shutting down)
    ├── DeadlineExceeded          no answer within the client's timeout
    └── Internal                  any other status (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)

``code`` is the ``grpc.StatusCode`` the server (or the gRPC runtime) returned.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class FleetError(Exception):
    """A call to the control plane failed; ``message`` is the server's, unchanged."""

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.code})"


class InvalidArgument(FleetError):
    default_code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(FleetError):
    default_code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(FleetError):
    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FleetError):
    default_code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(FleetError):
    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(FleetError):
    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(FleetError):
    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FleetError):
    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(FleetError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(FleetError):
    default_code = grpc.StatusCode.INTERNAL


_ERROR_BY_CODE: dict[grpc.StatusCode, type[FleetError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        FailedPrecondition,
        NotFound,
        AlreadyExists,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}


def error_from_status(code: grpc.StatusCode, message: str) -> FleetError:
    """The exception for one gRPC status; codes without a class of their own give Internal."""
    return _ERROR_BY_CODE.get(code, Internal)(message, code)


def error_from_rpc_error(error: grpc.RpcError) -> FleetError:
    """Translate what grpc raised, keeping the status details as the message."""
    if isinstance(error, grpc.Call):
        code = error.code()
        # A status without details still deserves a readable message.
        return error_from_status(code, error.details() or code.name)
    # An RpcError that is not a Call carries no status (grpc raises none such today).
    return Internal(str(error) or type(error).__name__, grpc.StatusCode.UNKNOWN)

"""The one way servicers refuse a call: a gRPC status with a message that names the field.

And the one place failures nobody refused become a status: `ErrorTranslation`, a server
interceptor, answers every call that meets an unreachable database with UNAVAILABLE and
the reason (clients retry that code), instead of gRPC's UNKNOWN with a stack trace logged.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias

import grpc

from control_plane.domain.limits import status_message
from control_plane.registry.database import DatabaseUnavailable

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
# A string: grpc.RpcMethodHandler is generic in the stubs only.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Behavior = Callable[..., Any]   # the sync stubs type handlers as sync; ours are async


async def refuse(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    # Cut to what a client accepts in a trailer, else it sees RESOURCE_EXHAUSTED instead.
    await context.abort(code, status_message(message))
    raise AssertionError("unreachable: abort raises")


class ErrorTranslation(grpc.aio.ServerInterceptor):
    """Wraps every method of the server: DatabaseUnavailable becomes UNAVAILABLE."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _translated(handler, handler_call_details.method)


class Undecodable:
    """What a unary request that is not its message decodes to (see _tolerant)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises (grpc.aio would answer UNKNOWN): bytes that are not
    the message become Undecodable, which the guard refuses with INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # protobuf's DecodeError, and whatever a codec raises
            return Undecodable(str(error) or type(error).__name__)

    return deserialize


def _translated(handler: Handler, method: str) -> Handler:
    common: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    unary_request = {**common, "request_deserializer": _tolerant(handler.request_deserializer)}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _guard(handler.unary_unary, method), **unary_request
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _guard(handler.unary_stream, method), **unary_request
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_guard(handler.stream_unary, method), **common)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _guard(handler.stream_stream, method), **common
        )
    return handler


def _guard(behavior: Behavior, method: str) -> Behavior:
    """The same kind of callable as behavior (gRPC tells a streaming handler that yields
    from one that writes by that), answering UNAVAILABLE when the database is out of reach."""

    async def unavailable(context: Context, error: DatabaseUnavailable) -> NoReturn:
        log.warning("%s: %s", method, error)
        await refuse(context, grpc.StatusCode.UNAVAILABLE, f"{error}; retry later")

    async def undecodable(context: Context, request: Undecodable) -> NoReturn:
        await refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                     f"request: not a {method} request message ({request.reason})")

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await undecodable(context, request)
            try:
                async for response in behavior(request, context):
                    yield response
            except DatabaseUnavailable as error:
                await unavailable(context, error)

        return stream

    if not inspect.iscoroutinefunction(behavior):
        return behavior  # a synchronous handler: none of ours

    async def call(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            await undecodable(context, request)
        try:
            return await behavior(request, context)
        except DatabaseUnavailable as error:
            await unavailable(context, error)

    return call

"""The one way servicers refuse a call: a gRPC status with a message that names the field."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

Context = grpc.aio.ServicerContext[Any, Any]


async def refuse(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")

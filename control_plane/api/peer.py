"""Which dataplane an agent stream's TLS client certificate allows.

With mutual TLS for agents (``--tls-client-ca``) the control plane listens twice: the main
port asks for no client certificate (the CLI, Flyte), the agent port requires one signed by
the client CA. gRPC verifies the chain; this module decides what the certificate means,
once the hello says which dataplane the stream is for (`check_agent_peer`):

- a certificate names its dataplane in its subject CN or a SAN, and binds the stream to
  that dataplane alone: another name is PERMISSION_DENIED;
- no certificate is UNAUTHENTICATED when agents need one (`AgentCertificates` installed),
  and fine when they do not (plaintext, or TLS without a client CA).

Whether agents need one is a setting of the server, not of the call: `AgentCertificates`,
a server interceptor, says so to every AgentService.Connect call it wraps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any

import grpc

from control_plane.api.errors import Behavior, Context, Handler, refuse

AGENT_CONNECT = "/fleet.v1.AgentService/Connect"
# Set only inside the AgentService.Connect calls of a server with a client CA.
_CERTIFICATE_REQUIRED: ContextVar[bool] = ContextVar("agent_certificate_required", default=False)


async def check_agent_peer(context: Context, dataplane: str) -> None:
    """Refuse the stream unless its client certificate (if any, or as required) names the
    dataplane of its hello."""
    names = certificate_names(context.auth_context())
    if not names:
        if _CERTIFICATE_REQUIRED.get():
            await refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "this control plane requires a client certificate for agents: dial its "
                "agent port (--agent-listen) with --tls-cert and --tls-key",
            )
        return
    if dataplane not in names:
        await refuse(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            f"hello.dataplane: the client certificate is for {' / '.join(sorted(names))}, "
            f"not for dataplane {dataplane!r}",
        )


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> set[str]:
    """The subject CN and subject alternative names of the peer's verified certificate
    (empty without one: gRPC puts them in the auth context only after verifying)."""
    values = [
        *auth_context.get("x509_common_name", ()),
        *auth_context.get("x509_subject_alternative_name", ()),
    ]
    return {value.decode(errors="replace") for value in values}


class AgentCertificates(grpc.aio.ServerInterceptor):
    """On a server with a client CA: every agent stream needs a client certificate."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method != AGENT_CONNECT:
            return handler
        if handler.stream_stream is None:
            return handler
        behavior: Behavior = handler.stream_stream   # ours is async (see errors.Behavior)

        # The variable is set in the call's own coroutine, so only this call sees it.
        async def connect(request_iterator: Any, context: Context) -> Any:
            token = _CERTIFICATE_REQUIRED.set(True)
            try:
                return await behavior(request_iterator, context)
            finally:
                _CERTIFICATE_REQUIRED.reset(token)

        return grpc.stream_stream_rpc_method_handler(
            connect,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

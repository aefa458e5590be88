"""The HTTP listener, on the control plane's own event loop: bound at start, closed at stop.

HTTPS with the gRPC side's certificate when that side serves TLS; plaintext only where it
does (settings.insecure), with the same loud warning off loopback.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)


class HttpListenError(ValueError):
    """The listener could not start; the message names the flag."""


class HttpServer:
    def __init__(self, runner: web.AppRunner, port: int, tls: bool) -> None:
        self._runner = runner
        self.port = port
        self.tls = tls

    async def stop(self) -> None:
        # Requests in flight get the grace given at start (the runner's shutdown_timeout);
        # idle keep-alive connections (a browser's) are closed at once.
        await self._runner.cleanup()


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise HttpListenError(
            f"--tls-cert/--tls-key: cannot serve HTTPS with {cert_file} and {key_file}: {error}"
        ) from None
    return context


def split_listen(listen: str) -> tuple[str | None, int]:
    """'host:port', '[::1]:port', ':port' (every interface) into aiohttp's host and port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise HttpListenError(f"--http-listen: {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    host = host.strip("[]")
    return host or None, int(port)


async def start_http(
    app: web.Application,
    listen: str,
    tls: ssl.SSLContext | None,
    *,
    grace_s: float = 2.0,
    port_file: str | None = None,
) -> HttpServer:
    host, port = split_listen(listen)
    # No access log: the page polls every few seconds, and the gRPC side logs no calls.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise HttpListenError(f"--http-listen: cannot bind {listen}: {error.strerror}") from None
    bound = int(runner.addresses[0][1])
    if tls is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "PLAINTEXT HTTP on %s (--insecure): API keys sent to the dashboard and /metrics "
            "can be read on the network. Serve TLS unless a service mesh terminates it.",
            listen,
        )
    log.info("HTTP (%s) on port %d: /metrics, /healthz, the dashboard at /",
             "PLAINTEXT" if tls is None else "TLS", bound)
    if port_file:
        Path(port_file).write_text(f"{bound}\n")
    return HttpServer(runner, bound, tls is not None)

"""Free TCP ports on 127.0.0.1 for servers that tests start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now.

    The port is released before it is returned, so another process may take it before the
    caller binds it; callers that can retry on "address in use" should.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port

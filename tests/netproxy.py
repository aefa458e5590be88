"""A TCP proxy on 127.0.0.1 that tests can partition: `cut()`, `heal()`, `drop_connections()`.

Put it between an agent and the control plane (the agent dials `proxy.address`) to make a
network partition between exactly those two, while everything else keeps talking.

What `cut()` models, and why: a real partition drops packets silently. Neither end is told;
open TCP connections stay open, what is written queues up and is retransmitted, and a new
connection attempt just hangs. So during a cut the proxy forwards no byte in either
direction and closes nothing: open connections are frozen (the proxy stops reading them, so
the kernel buffers fill as they would behind a dead link), and new connections are accepted
and held, also without a byte forwarded. Each end can only find out by its own timers
(heartbeats not arriving, gRPC keepalive pings not answered). Closing the sockets instead
would tell both ends at once, which is a reset, not a partition.

`heal()` lets everything flow again: the queued bytes go through in order, and connections
accepted during the cut are connected to the target then, like a SYN retransmitted after the
link came back. A partition shorter than both ends' keepalives therefore resumes the same
connection, as it does in reality.

`drop_connections()` closes every open connection at once, both sides (each end sees the
connection end; the proxy keeps listening). Used during a cut it models a partition that
outlived the ends' keepalives: both gave up on the connection, and the client's new attempts
hang in the partition until `heal()`.

Standard library only: one thread accepts, and each connection gets a thread that waits
for the link to be up, connects to the target and pumps both directions.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType

POLL_S = 0.05          # how often blocked threads look at the link's state
CHUNK = 64 * 1024


class NetProxy:
    def __init__(self, target: str, *, connect_timeout_s: float = 5.0) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host or "127.0.0.1", int(port))
        self._connect_timeout_s = connect_timeout_s
        self._up = threading.Event()      # set: bytes flow; clear: the link is cut
        self._up.set()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="netproxy-accept",
                                          daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return not self._up.is_set()

    def cut(self) -> None:
        """Partition: forward nothing either way, close nothing, hold new connections."""
        self._up.clear()

    def heal(self) -> None:
        """Let queued bytes and held connections through again."""
        self._up.set()

    def drop_connections(self) -> int:
        """Close every open connection, both sides, at once; returns how many there were."""
        with self._lock:
            links = list(self._links)
            self._links.clear()
        for link in links:
            link.close()
        return len(links)

    def open_connections(self) -> int:
        """Connections accepted and not closed yet (held ones during a cut included)."""
        with self._lock:
            return sum(not link.closed for link in self._links)

    def stop(self) -> None:
        """Stop listening and close every connection."""
        self._stopped.set()
        self._up.set()  # wake threads waiting for a heal so that they see the stop
        self._acceptor.join(5)
        self._listener.close()
        self.drop_connections()

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- threads ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            link = _Link(client)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=self._serve, args=(link,), name="netproxy-link",
                             daemon=True).start()

    def _wait_up(self, link: _Link) -> bool:
        """Block while the link is cut; False once the connection or the proxy is gone."""
        while not self._up.wait(POLL_S):
            if link.closed:
                return False
        return not (link.closed or self._stopped.is_set())

    def _serve(self, link: _Link) -> None:
        try:
            # Accepted during a cut: the connection to the target waits for the heal.
            if not self._wait_up(link):
                return
            try:
                upstream = socket.create_connection(self.target, self._connect_timeout_s)
            except OSError:
                return  # the target is down: the client sees its connection closed
            link.upstream = upstream
            if link.closed:   # dropped while connecting: close() may not have seen it
                upstream.close()
                return
            back = threading.Thread(target=self._pump, args=(link, upstream, link.client),
                                    name="netproxy-pump", daemon=True)
            back.start()
            self._pump(link, link.client, upstream)
            back.join()
        finally:
            link.close()
            with self._lock:
                self._links.discard(link)

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        """Copy source to sink until either ends; while cut, read nothing and send nothing."""
        try:
            while self._wait_up(link):
                readable, _, _ = select.select([source], [], [], POLL_S)
                if not readable:
                    continue
                data = source.recv(CHUNK)
                if not data:
                    break
                # A cut that began after the read holds the bytes until the heal.
                if not self._wait_up(link):
                    break
                sink.sendall(data)
        except (OSError, ValueError):
            pass  # the other pump or drop_connections closed the sockets
        finally:
            link.close()


class _Link:
    """One client connection and, once connected, its connection to the target."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

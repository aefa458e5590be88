"""How a control plane is started: one frozen value, filled by the CLI or by tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControlPlaneSettings:
    # host:port to listen on; port 0 picks a free port (the bound port is logged and
    # written to port_file when given).
    listen: str = "127.0.0.1:50051"
    # SQLAlchemy URL: sqlite+aiosqlite:///path.db (embedded default) or
    # postgresql+psycopg://user@host:port/db. Plain sqlite:/// and postgresql:// are accepted.
    database_url: str = "sqlite+aiosqlite:///fleet.db"
    # API keys for callers and enrolled join tokens for agents. Off only on loopback (the
    # demo), where every caller is an admin and any agent may join.
    auth: bool = True
    # Calls a second per API key (bursts of twice that); 0: no limit.
    rate_limit_per_s: float = 100.0
    heartbeat_interval_s: float = 5.0
    # A dataplane silent this long gets no new placements.
    stale_after_s: float = 15.0
    # A dataplane silent this long has its attempts declared lost and requeued.
    lost_after_s: float = 60.0
    # Scheduler pass at least this often (it also runs on every submit and heartbeat).
    schedule_interval_s: float = 1.0
    # Apply alembic migrations at start (the embedded default); production runs a
    # migration job instead and starts replicas with migrate=False.
    migrate: bool = True
    port_file: str | None = None
    # host:port where the other replicas on this database reach this one (to hand over
    # messages for the agents connected here). Empty: the listen address, with the
    # machine's host name when listening on every interface.
    advertise: str = ""
    # Transport security: TLS from tls_cert and tls_key (PEM files; the cert file may hold
    # the chain), or plaintext only when insecure is chosen explicitly (see
    # transport_problem). A service mesh that terminates TLS in a sidecar is such a choice.
    insecure: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    # Mutual TLS for agents: a second listener (agent_listen) where every client presents
    # a certificate signed by tls_client_ca; agent streams on the main port are refused.
    # gRPC's Python server can only require client certificates on a port or not ask for
    # them, so the port without them (CLI, Flyte) and the port with them must be two.
    tls_client_ca: str | None = None
    agent_listen: str = ""
    # When the control plane dials itself or another replica (relay, the Flyte connector it
    # serves) it trusts tls_ca, else tls_cert itself (a self-signed certificate, or a file
    # holding the chain up to its root), and checks tls_server_name in the certificate
    # (empty: the host it dials; a pod IP is seldom in a certificate).
    tls_ca: str | None = None
    tls_server_name: str = ""
    # The HTTP side: /metrics, /healthz and the read-only web dashboard with its JSON API,
    # on host:port (empty: none). HTTPS with tls_cert and tls_key when the gRPC side serves
    # TLS, plaintext where it does. Port 0 picks a free port (written to http_port_file).
    http_listen: str = ""
    http_port_file: str | None = None


def transport_problem(settings: ControlPlaneSettings) -> str | None:
    """Why these settings cannot serve (naming the flags), or None. Plaintext is served only
    when chosen explicitly; TLS needs a certificate and its key; no auth only on loopback."""
    if not settings.auth and not is_loopback(settings.listen):
        return f"--no-auth: only on a loopback address (127.0.0.1, ::1), not {settings.listen}"
    if not settings.auth and settings.http_listen and not is_loopback(settings.http_listen):
        return (
            "--no-auth: only on a loopback address (127.0.0.1, ::1), "
            f"and --http-listen is {settings.http_listen}"
        )
    if settings.insecure and (settings.tls_cert or settings.tls_key or settings.tls_client_ca):
        return "--insecure serves plaintext: leave out --tls-cert, --tls-key and --tls-client-ca"
    if not settings.insecure and not (settings.tls_cert or settings.tls_key):
        return (
            "TLS needs --tls-cert FILE and --tls-key FILE (FLEET_TLS_CERT, FLEET_TLS_KEY); "
            "to serve plaintext, say so with --insecure (FLEET_INSECURE=1)"
        )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        return "--tls-cert and --tls-key: give both (the certificate and its private key)"
    if bool(settings.tls_client_ca) != bool(settings.agent_listen):
        return (
            "--tls-client-ca and --agent-listen go together: agents with client certificates "
            "dial the second listener, everyone else the main one"
        )
    return None


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1", "localhost")

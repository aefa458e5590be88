"""How an agent is started: one frozen value, filled by the CLI or by tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AgentSettings:
    control_plane: str            # host:port the agent dials; replicas: comma-separated
    pools_file: Path              # YAML: the dataplane and its GPU pools
    join_token: str
    workdir: Path                 # one folder per attempt lives under workdir/attempts
    # The cluster of a kubernetes pool file; None: in-cluster, else $KUBECONFIG or ~/.kube/config.
    kubeconfig: Path | None = None
    # Reconnect backoff: exponential from min to max seconds, with full jitter.
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0
    # How often the launcher looks at the running attempts' folders.
    poll_interval_s: float = 0.25
    # SIGTERM to SIGKILL, when a cancel or a timeout stops a job (a Cancel may say otherwise).
    kill_grace_s: float = 10.0
    # Forgotten attempt folders (kept for their logs) are deleted after this long.
    forgotten_retention_s: float = 24 * 3600.0
    # gRPC keepalive ping interval: notices a dead control plane or a dropped connection.
    # The control plane must accept pings this often (see connection.create_channel).
    keepalive_s: float = 20.0
    # Transport: TLS checked against the system's roots, or tls_ca (PEM) when given; with
    # tls_cert and tls_key the agent presents a client certificate (mutual TLS: its CN or a
    # SAN names this dataplane). Plaintext only when insecure is chosen explicitly. The
    # files are read at every connect, so a renewed certificate is used at the next one.
    insecure: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # HOST:PORT where Prometheus scrapes this agent's /metrics (dataplane_agent/metrics.py);
    # None: no metrics port.
    metrics_listen: str | None = None


def transport_problem(settings: AgentSettings) -> str | None:
    """Why the agent cannot dial with these settings (naming the flags), or None."""
    if settings.insecure and (settings.tls_ca or settings.tls_cert or settings.tls_key):
        return "--insecure dials plaintext: leave out --tls-ca, --tls-cert and --tls-key"
    if (settings.tls_cert is None) != (settings.tls_key is None):
        return "--tls-cert and --tls-key: give both (the client certificate and its key)"
    return None

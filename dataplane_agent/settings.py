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

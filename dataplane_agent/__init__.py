"""The dataplane agent: one per cluster, dialing out to the control plane.

Layers, from the inside out (each imports only those before it):

- ``domain``: pure decisions, no I/O. ``domain.attempt`` derives a local attempt's phase
  from the facts its folder records (the state table lives there), ``domain.capacity``
  decides which waiting attempts fit their pool's free GPUs (FIFO), ``domain.backoff``
  spaces out reconnects, ``domain.flyte`` is Flyte's task contract, ``domain.kube_nodes``
  turns a cluster's nodes into GPU pools and ``domain.kube_pods`` makes an attempt's pod and
  reads its phase back (that state table lives there).
- ``pool_file``: the YAML file naming the dataplane and either its fixed GPU pools or a
  ``kubernetes`` section, checked with errors that give file:line:col, field and reason.
- ``launcher``: runs attempts behind the small ``Launcher`` protocol. ``ProcessLauncher``
  starts each attempt under a detached runner process (``launcher.runner``) with one folder
  per attempt; ``KubernetesLauncher`` makes one pod per attempt through ``launcher.kube_api``
  (the only module that imports the ``kubernetes`` client), kept current by list+watch
  informers (``launcher.informer``); ``launcher.kube_plan`` turns a launch into its pod.
  Flyte tasks are staged in the dataplane's store (any
  fsspec URL): ``launcher.staging`` does the fsspec I/O. Only the literal maps and error
  messages leave the region, never the data.
- ``connection`` (with ``wire`` for the protobuf translations): the one bidirectional
  gRPC stream to the control plane, heartbeats, control messages, reconnects.
- ``agent``: ``run_agent`` picks the launcher, wires them together and runs until
  SIGINT/SIGTERM.

Exports resolve lazily (here and in ``launcher``), so the runner process (which imports
this package) stays small: it never loads gRPC, protobuf, pydantic, fsspec or flyteidl.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dataplane_agent.settings import AgentSettings

if TYPE_CHECKING:
    from dataplane_agent.agent import run_agent
    from dataplane_agent.launcher.cleanup import stop_all_attempts
    from dataplane_agent.pool_file import PoolFileError, load_pool_file

__all__ = [
    "AgentSettings",
    "PoolFileError",
    "load_pool_file",
    "run_agent",
    "stop_all_attempts",
]

_LAZY = {
    "run_agent": "dataplane_agent.agent",
    "stop_all_attempts": "dataplane_agent.launcher.cleanup",
    "PoolFileError": "dataplane_agent.pool_file",
    "load_pool_file": "dataplane_agent.pool_file",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dataplane_agent' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)

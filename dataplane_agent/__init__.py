"""The dataplane agent: one per cluster, dialing out to the control plane.

Layers, from the inside out (each imports only those before it):

- ``domain``: pure decisions, no I/O. ``domain.attempt`` derives an attempt's phase from
  the facts its folder records (the state table lives there), ``domain.capacity`` decides
  which waiting attempts fit their pool's free GPUs (FIFO), ``domain.backoff`` spaces out
  reconnects, ``domain.flyte`` is Flyte's task contract: the store layout of an attempt,
  rendering Flyte's placeholders in a command, the task's environment, and what the files a
  finished task left (outputs.pb, error.pb) mean for the attempt's end.
- ``pool_file``: the YAML file naming the dataplane, its GPU pools and its regional store
  prefix, checked with errors that give file:line:col, the field and the reason.
- ``launcher``: runs attempts behind the small ``Launcher`` protocol. ``ProcessLauncher``
  starts each attempt under a detached runner process (``launcher.runner``) with one folder
  per attempt under ``workdir/attempts``; a Kubernetes launcher will slot in beside it.
  Flyte tasks are staged in the dataplane's store (any fsspec URL; ``<workdir>/store`` by
  default): ``launcher.staging`` does the fsspec I/O (inputs.pb before the start, outputs.pb
  and error.pb after the end), ``launcher.flyte_tasks`` runs it in worker threads for the
  launcher. Only the literal maps and error messages leave the region, never the data.
- ``connection`` (with ``wire`` for the protobuf translations): the one bidirectional
  gRPC stream to the control plane, heartbeats, control messages, reconnects.
- ``agent``: ``run_agent`` wires them together and runs until SIGINT/SIGTERM.

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

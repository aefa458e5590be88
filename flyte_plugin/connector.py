"""The Flyte connector of the `fleet` task type: submits, follows and cancels fleet jobs.

propeller (through flytekit's connector service) or flytekit's local executor calls
create/get/delete; each is one call to the control plane's JobService. The control plane's
address comes from ``FLEET_ADDRESS`` (default 127.0.0.1:50051) unless the connector was given
one (see flyte_plugin.connector_service.install); the channel is TLS checked against the
system's roots, or against ``FLEET_TLS_CA`` (a PEM file), and plaintext only with
``FLEET_INSECURE=1`` (fleet_client.TlsConfig.from_env), unless given its own TlsConfig. It
calls with the API key in ``FLEET_API_KEY`` (a submitter key of the projects it serves);
the key never enters the resource meta Flyte stores, which holds ids only.
"""

# flytekit and flyteidl ship no type information (no py.typed): their names are Any here.
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any

from flyteidl.core import literals_pb2  # type: ignore[import-untyped]
from flyteidl.core.execution_pb2 import TaskExecution  # type: ignore[import-untyped]
from flytekit.extend.backend.base_connector import (  # type: ignore[import-untyped]
    AsyncConnectorBase,
    ConnectorRegistry,
    Resource,
    ResourceMeta,
)
from flytekit.models.literals import LiteralMap  # type: ignore[import-untyped]
from flytekit.models.task import TaskExecutionMetadata, TaskTemplate  # type: ignore[import-untyped]

from fleet_client import FailedPrecondition, FleetClient, InvalidArgument, NotFound, TlsConfig
from flyte_plugin.job_spec import build_submission
from flyte_plugin.mapping import flyte_phase
from flyte_plugin.task import TASK_TYPE

DEFAULT_ADDRESS = "127.0.0.1:50051"
CONNECTOR_NAME = "Fleet Connector"
CALL_TIMEOUT_S = 30.0


class FleetRejected(ValueError):
    """The control plane refused the task; the message is the control plane's own."""


@dataclass
class FleetMetadata(ResourceMeta):  # type: ignore[misc]  # flytekit's base is untyped
    """What propeller keeps between calls: the fleet's job id (never credentials)."""

    job_id: str


class FleetConnector(AsyncConnectorBase):  # type: ignore[misc]  # flytekit's base is untyped
    name = CONNECTOR_NAME

    def __init__(
        self, address: str | None = None, tls: TlsConfig | None = None, api_key: str | None = None
    ) -> None:
        super().__init__(task_type_name=TASK_TYPE, metadata_type=FleetMetadata)
        self.address_override = address
        self.tls_override = tls
        self.api_key_override = api_key
        self._clients: dict[tuple[str, TlsConfig, str], FleetClient] = {}
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return self.address_override or os.environ.get("FLEET_ADDRESS") or DEFAULT_ADDRESS

    @property
    def tls(self) -> TlsConfig:
        return self.tls_override or TlsConfig.from_env()

    @property
    def api_key(self) -> str:
        if self.api_key_override is not None:
            return self.api_key_override
        return os.environ.get("FLEET_API_KEY", "")

    def _client(self) -> FleetClient:
        # One channel per address and key, shared by the threads flytekit runs sync methods in.
        key = (self.address, self.tls, self.api_key)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = FleetClient(
                    key[0], timeout_s=CALL_TIMEOUT_S, tls=key[1], api_key=key[2]
                )
            return client

    def create(
        self,
        task_template: TaskTemplate,
        output_prefix: str,
        inputs: LiteralMap | None = None,
        task_execution_metadata: TaskExecutionMetadata | None = None,
        **kwargs: Any,
    ) -> FleetMetadata:
        submission = build_submission(task_template, inputs, task_execution_metadata, os.environ)
        try:
            response = self._client().submit(submission.spec, client_key=submission.client_key)
        except (InvalidArgument, FailedPrecondition) as error:
            raise FleetRejected(
                f"the fleet control plane at {self.address} refused task "
                f"{task_template.id.name}: {error.message}"
            ) from error
        return FleetMetadata(job_id=response.job.id)

    def get(self, resource_meta: FleetMetadata, **kwargs: Any) -> Resource:
        job = self._client().get(resource_meta.job_id)
        phase = flyte_phase(job)
        if phase == TaskExecution.SUCCEEDED:
            # Values and URIs into the dataplane's store: the data itself stays there.
            return Resource(phase=phase, message=job.message, outputs=job_outputs(job.outputs))
        return Resource(phase=phase, message=job.message)

    def delete(self, resource_meta: FleetMetadata, **kwargs: Any) -> None:
        """Cancel the job; a job that is gone or already over is fine."""
        with contextlib.suppress(NotFound, FailedPrecondition):
            self._client().cancel(resource_meta.job_id, reason="aborted in Flyte")


def job_outputs(serialized: bytes) -> LiteralMap:
    """The LiteralMap a succeeded job returned (an empty map for a task without outputs)."""
    proto = literals_pb2.LiteralMap()
    proto.ParseFromString(serialized)
    return LiteralMap.from_flyte_idl(proto)


_CONNECTOR: FleetConnector | None = None


def register() -> FleetConnector:
    """Register the connector once per process; return the registered one."""
    global _CONNECTOR
    if _CONNECTOR is None:
        _CONNECTOR = FleetConnector()
        ConnectorRegistry.register(_CONNECTOR)
    return _CONNECTOR


__all__ = ["FleetConnector", "FleetMetadata", "FleetRejected", "job_outputs", "register"]

"""Fixtures of the CLI and client tests: a fake control plane on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from fleet.v1 import admin_pb2_grpc, jobs_pb2_grpc

import control_plane
from control_plane.settings import ControlPlaneSettings
from tests.cli.fakes import FakeFleet


@pytest.fixture
def fake_fleet() -> Iterator[FakeFleet]:
    fake = FakeFleet()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    jobs_pb2_grpc.add_JobServiceServicer_to_server(fake, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(fake, server)
    admin_pb2_grpc.add_PolicyServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake.address = f"127.0.0.1:{port}"
    yield fake
    if fake.hold_watch is not None:
        fake.hold_watch.set()
    server.stop(grace=None)


@pytest.fixture
def unreachable_address() -> str:
    """An address on 127.0.0.1 where nothing listens (a port just released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ControlPlaneSettings]:
    """Runs `fleet control-plane` without serving: the settings each call would serve."""
    calls: list[ControlPlaneSettings] = []

    def serve(settings: ControlPlaneSettings, extra_services: object = ()) -> None:
        calls.append(settings)

    monkeypatch.setattr(control_plane, "serve", serve, raising=False)
    return calls

"""Fixtures for tests that talk to Kubernetes: `cluster` (a `Cluster` driver on a fresh
namespace of a `FakeKubeAPI`, or of the real API server FLEET_TEST_KUBECONFIG points at) and
`fake_api` (the fake behind it; skips on a real cluster).

Other test folders can use them with
`from tests.kube.conftest import cluster, fake_api  # noqa: F401` in their conftest.py.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.cluster import NAME_PREFIX, Cluster
from tests.kube.fake_api import FakeKubeAPI

KUBECONFIG_ENV = "FLEET_TEST_KUBECONFIG"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A driver on a fresh namespace `fleet-test-<8 hex>`; on the fake, a fresh server too, so
    no node, pod or recorded request of another test is left (fake.requests starts empty)."""
    namespace = f"{NAME_PREFIX}{secrets.token_hex(4)}"
    real = os.environ.get(KUBECONFIG_ENV)
    if real:
        driver = Cluster(Path(real), namespace, None)
        try:
            driver.create_namespace(namespace)
            yield driver
        finally:
            driver.cleanup()
        return
    with FakeKubeAPI() as fake:
        driver = Cluster(fake.write_kubeconfig(tmp_path / "kubeconfig"), namespace, fake)
        try:
            driver.create_namespace(namespace)
            fake.requests.clear()
            yield driver
        finally:
            driver.cleanup()


@pytest.fixture
def fake_api(cluster: Cluster) -> FakeKubeAPI:
    """The fake behind `cluster`, for tests of fake-only features (compact, logs, requests)."""
    if cluster.fake is None:
        pytest.skip(f"needs the fake Kubernetes API ({KUBECONFIG_ENV} is set)")
    return cluster.fake

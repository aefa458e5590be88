"""Data stays in region: a file an EU task writes lives only in the EU dataplane's store.

The control plane keeps the file's URI (in the job's outputs), never its bytes; neither the
other dataplane nor the local flytekit run holds a copy; no log shows the bytes. The
payload is derived from a seed inside the task, so only the seed travels as an input.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flyteidl.core import literals_pb2
from flytekit import FlyteContextManager

from fleet_cli.local_fleet import LocalFleet
from tests.flyte import workflows
from tests.flyte.harness import gpu_pool, pool_file, running_fleet

pytestmark = pytest.mark.e2e


@dataclass
class TwoRegions:
    fleet: LocalFleet
    eu_store: Path
    us_store: Path

    @property
    def database(self) -> Path:
        return self.fleet.root / "control-plane.db"  # LocalFleet's SQLite default


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRegions]:
    stores = tmp_path_factory.mktemp("stores")
    eu_store, us_store = stores / "eu", stores / "us"
    agents = {
        "eu": pool_file("eu", "europe-west4", [gpu_pool("h100", "H100", 2)], eu_store),
        "us": pool_file("us", "us-east-1", [gpu_pool("h100", "H100", 2)], us_store),
    }
    with running_fleet(tmp_path_factory.mktemp("residency"), agents) as fleet:
        yield TwoRegions(fleet, eu_store, us_store)


def files_containing(root: Path, needle: bytes) -> list[Path]:
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def database_values(path: Path) -> Iterator[tuple[str, bytes]]:
    """Every value of every table of the control plane's SQLite database, as bytes."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        yield table, value
                    elif value is not None:
                        yield table, str(value).encode()


def test_an_eu_file_stays_in_the_eu_store(regions: TwoRegions) -> None:
    seed = uuid.uuid4().hex
    payload = workflows.residency_payload(seed).encode()

    workflows.eu_file(seed=seed)

    with regions.fleet.client() as client:
        [job] = [
            client.get(j.id)
            for j in client.iter_jobs()
            if j.spec.name == "tests.flyte.workflows.write_eu_file"
        ]
    assert job.dataplane == "eu"
    outputs = literals_pb2.LiteralMap.FromString(job.outputs)
    uri = outputs.literals["o0"].scalar.blob.uri
    stored = Path(uri.removeprefix("file://"))
    assert stored.is_relative_to(regions.eu_store), uri
    assert payload in stored.read_bytes()

    # The bytes: in the EU store (flytekit may keep a staging copy there too), and nowhere
    # else the fleet or the local run keeps files.
    assert stored in files_containing(regions.eu_store, payload)
    assert files_containing(regions.us_store, payload) == []
    assert files_containing(regions.fleet.root, payload) == []
    logs = [regions.fleet.root / "control-plane.log"]
    logs += [agent.log_file for agent in regions.fleet.agents.values()]
    assert [log.name for log in logs if payload in log.read_bytes()] == []
    local = FlyteContextManager.current_context().file_access
    assert files_containing(Path(local.raw_output_prefix), payload) == []

    # The control plane: the URI in the job's outputs, the payload in no table and no file.
    values = list(database_values(regions.database))
    assert any(uri.encode() in value for _table, value in values), "the URI is kept"
    assert [table for table, value in values if payload in value] == []
    database_files = regions.database.parent.glob(regions.database.name + "*")
    assert [f for f in database_files if payload in f.read_bytes()] == []

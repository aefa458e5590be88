"""Project-wide checks: the checked-in wire code is fresh, the layering contracts hold, and
the code is mypy-strict and ruff clean. Each runs the same tool a developer runs by hand
(`make protos`, `make lint`, `make typecheck`) and fails with that tool's output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import fleet

ROOT = Path(__file__).resolve().parent.parent
WIRE_PACKAGE = Path("protos") / "fleet" / "v1"
GENERATED = re.compile(r"_pb2(_grpc)?\.pyi?$")


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], cwd=ROOT, capture_output=True,
                          text=True, check=False)


def generated_files(package: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in package.iterdir() if GENERATED.search(p.name)}


def test_the_wire_contract_is_imported_from_protos() -> None:
    # A different installed `fleet` package would shadow the checked-in code.
    assert Path(fleet.__file__).resolve().parent == ROOT / "protos" / "fleet"


def test_generated_protos_are_fresh(tmp_path: Path) -> None:
    result = run(sys.executable, ROOT / "protos" / "generate.py", tmp_path)
    assert result.returncode == 0, f"protos/generate.py failed:\n{result.stdout}{result.stderr}"
    fresh = generated_files(tmp_path / "fleet" / "v1")
    checked_in = generated_files(ROOT / WIRE_PACKAGE)
    assert fresh, "protos/generate.py generated nothing"
    problems = [
        f"{WIRE_PACKAGE / name} is stale: run `make protos`"
        for name, content in sorted(fresh.items())
        if checked_in.get(name) != content
    ] + [
        f"{WIRE_PACKAGE / name} has no .proto behind it: delete it"
        for name in sorted(checked_in.keys() - fresh.keys())
    ]
    assert not problems, "\n".join(problems)


def test_the_layering_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), f"{lint_imports} is missing: run `make venv`"
    result = run(lint_imports, "--no-logo", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes() -> None:
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr

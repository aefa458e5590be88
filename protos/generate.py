"""Regenerate the Python code of the wire contract (`make protos`).

Usage: python protos/generate.py [OUT_DIR]

OUT_DIR defaults to this folder, where the generated package `fleet.v1` is checked in.
A test regenerates into a temporary folder and fails when the checked-in code is stale.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_PACKAGE = Path("fleet") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_sources() -> list[Path]:
    return sorted((HERE / PROTO_PACKAGE).glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules under out_dir/fleet/v1 and return their paths."""
    target = out_dir / PROTO_PACKAGE
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.iterdir():
        if stale.name.endswith(GENERATED_SUFFIXES):
            stale.unlink()
    # protoc finds the mypy plugins (protoc-gen-mypy*) on PATH, beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{HERE}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(HERE)) for p in proto_sources()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in (out_dir / "fleet", target):
        (package / "__init__.py").touch()
    (out_dir / "fleet" / "py.typed").touch()
    return sorted(p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for path in generate(out):
        print(path)

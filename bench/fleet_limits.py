"""The machine's own limits, measured by bench/fleet_bench.py in the same run as the fleet, so
that every fleet figure can be read as a fraction of what this machine can do at all:

- Postgres: single-row INSERT commits a second with 16 clients (psycopg 3, one connection
  each, autocommit) into a scratch table on the benchmark's own server (fsync on).
- gRPC: a bare grpc.aio unary echo on loopback, a generic-handler server in a subprocess
  and one asyncio client with many calls in flight: calls a second.

    .venv/bin/python bench/fleet_limits.py echo-server PORT_FILE   # the echo server alone
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import grpc
import grpc.aio
import psycopg

ECHO_METHOD = "/bench.Echo/Echo"
PAYLOAD = b"x" * 64
SERVER_START_TIMEOUT_S = 20.0


async def postgres_insert_rate(conninfo: str, seconds: float, clients: int = 16) -> float:
    """Commits a second: each client inserts one row per transaction for `seconds`."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as setup:
        await setup.execute("DROP TABLE IF EXISTS bench_scratch")
        await setup.execute(
            "CREATE TABLE bench_scratch (id bigserial PRIMARY KEY, client int NOT NULL, "
            "payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )
    connections = [
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) for _ in range(clients)
    ]
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    counts = [0] * clients

    async def client(index: int, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        while loop.time() < end:
            await conn.execute(
                "INSERT INTO bench_scratch (client, payload) VALUES (%s, %s)",
                (index, "a job's worth of text"),
            )
            counts[index] += 1

    started = loop.time()
    try:
        await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
    finally:
        elapsed = loop.time() - started
        for conn in connections:
            await conn.close()
    return sum(counts) / elapsed


async def grpc_echo_rate(address: str, seconds: float, in_flight: int = 64) -> float:
    """Unary calls a second against the echo server, `in_flight` calls at a time."""
    async with grpc.aio.insecure_channel(address) as channel:
        # No serializers: bytes in, bytes out.
        echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            ECHO_METHOD)
        await echo(PAYLOAD, timeout=10)           # connected before the clock starts
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        count = 0

        async def caller() -> None:
            nonlocal count
            while loop.time() < end:
                await echo(PAYLOAD, timeout=10)
                count += 1

        started = loop.time()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        return count / (loop.time() - started)


async def measure_echo_rate(folder: Path, seconds: float) -> float:
    """Start the echo server in a subprocess, measure, stop it."""
    port_file = folder / "echo.port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "echo-server", str(port_file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not port_file.exists() or not port_file.read_text().strip():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gRPC echo server did not start")
            await asyncio.sleep(0.05)
        return await grpc_echo_rate(f"127.0.0.1:{port_file.read_text().strip()}", seconds)
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)
        if server.poll() is None:
            server.kill()
            server.wait()


async def serve_echo(port_file: Path) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(f"{port}\n")
    await server.wait_for_termination()


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] != "echo-server":
        sys.exit("usage: fleet_limits.py echo-server PORT_FILE")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_echo(Path(sys.argv[2])))


if __name__ == "__main__":
    main()

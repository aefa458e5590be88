"""A fleet of local processes: one control plane and several agents, each a real
subprocess of `fleet`, with logs in one folder. `fleet demo` and the end-to-end tests use
it; stopping it leaves no process behind (also after Ctrl-C).

Plaintext on 127.0.0.1 by default, chosen explicitly (--insecure, FLEET_INSECURE=1 for
every process it starts); with `tls` the control plane serves TLS, and with a client CA
the agents dial its mutual-TLS port (each agent's client certificate in its extra_args).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from fleet_client import PLAINTEXT, FleetClient, TlsConfig, Unavailable

STOP_TIMEOUT_S = 5.0
# Set or removed in every process the fleet starts, whatever the caller's environment says.
TLS_ENV = ("FLEET_INSECURE", "FLEET_TLS_CA")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class AgentProcess:
    name: str
    pools_file: Path
    workdir: Path
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()     # e.g. --kubeconfig for a kubernetes pool file
    join_token: str = field(default="", repr=False)   # with auth: its enrolled token
    control_plane: str = ""              # the address it dials; empty: the fleet's


@dataclass
class ReplicaProcess:
    """A further control plane on the fleet's (Postgres) database."""

    port: int
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    agent_port: int = field(default_factory=free_port)   # with FleetTls.client_ca

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class FleetTls:
    """The control plane's certificate (for 127.0.0.1) and the CA everyone else trusts;
    client_ca turns on mutual TLS for agents."""

    cert: Path
    key: Path
    ca: Path
    client_ca: Path | None = None


@dataclass
class LocalFleet:
    root: Path
    database_url: str = ""
    heartbeat_interval_s: float = 1.0
    stale_after_s: float = 5.0
    lost_after_s: float = 15.0
    port: int = field(default_factory=free_port)
    # Where the agents' job processes find task modules (Flyte tasks import their module).
    python_path: tuple[Path, ...] = ()
    # Serve flytekit's connector service on the control plane's port too.
    flyte_connector: bool = False
    # None: plaintext, on 127.0.0.1 only.
    tls: FleetTls | None = None
    # False: --no-auth (127.0.0.1 only). True: an admin key is made in the database once the
    # control plane has migrated it, and each agent is enrolled for its own join token.
    auth: bool = False
    admin_key: str = field(default="", repr=False)
    agent_port: int = field(default_factory=free_port)   # with tls.client_ca
    # The control plane's HTTP side: /metrics and the web dashboard (see http_url).
    http_port: int = field(default_factory=free_port)
    control_plane: subprocess.Popen[bytes] | None = None
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    replicas: list[ReplicaProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The web dashboard (and /metrics under it): HTTPS when the fleet serves TLS."""
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.http_port}/"

    @property
    def client_tls(self) -> TlsConfig:
        return PLAINTEXT if self.tls is None else TlsConfig(ca_file=str(self.tls.ca))

    def client(self, timeout_s: float = 30.0) -> FleetClient:
        """A client of the control plane, with the fleet's transport (and its admin key)."""
        return FleetClient(
            self.address, timeout_s=timeout_s, tls=self.client_tls, api_key=self.admin_key
        )

    def client_env(self) -> dict[str, str]:
        """What `fleet` commands and `pyflyte run` need to reach this fleet (FLEET_ADDRESS,
        and FLEET_INSECURE=1 or FLEET_TLS_CA)."""
        key = {"FLEET_API_KEY": self.admin_key} if self.admin_key else {}
        if self.tls is None:
            return {"FLEET_ADDRESS": self.address, "FLEET_INSECURE": "1", **key}
        return {"FLEET_ADDRESS": self.address, "FLEET_TLS_CA": str(self.tls.ca), **key}

    def _env(self) -> dict[str, str]:
        """The fleet's processes, and the jobs they start, see this environment: this
        interpreter's bin first (pyflyte-execute), and python_path before PYTHONPATH."""
        python_path = [str(p) for p in self.python_path]
        if os.environ.get("PYTHONPATH"):
            python_path.append(os.environ["PYTHONPATH"])
        transport = {k: v for k, v in self.client_env().items() if k in TLS_ENV}
        return {
            **{k: v for k, v in os.environ.items() if k not in TLS_ENV},
            **transport,
            "PYTHONUNBUFFERED": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(python_path),
        }

    def _spawn(self, args: list[str], log_file: Path) -> subprocess.Popen[bytes]:
        with log_file.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "fleet_cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                # Own process group: Ctrl-C in the terminal reaches only us, and we stop
                # the fleet in order.
                start_new_session=True,
            )

    @property
    def addresses(self) -> str:
        """Every control plane, comma-separated, as an agent dials replicas."""
        return ",".join([self.address, *(replica.address for replica in self.replicas)])

    @property
    def agent_address(self) -> str:
        """Where agents dial: the mutual-TLS port with a client CA, else the only one."""
        if self.tls is not None and self.tls.client_ca is not None:
            return f"127.0.0.1:{self.agent_port}"
        return self.address

    def start_control_plane(self) -> None:
        args = self._control_plane_args(self.address, self.agent_port, migrate=True)
        self.control_plane = self._spawn(
            [*args, "--http-listen", f"127.0.0.1:{self.http_port}"],
            self.root / "control-plane.log",
        )
        if self.auth and not self.admin_key:
            self.admin_key = self._bootstrap_admin_key()

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.root / 'control-plane.db'}"

    def _bootstrap_admin_key(self) -> str:
        """`fleet keys create --db`, as an operator does once: retried until the control
        plane has made the schema."""
        deadline = time.monotonic() + 60
        while True:
            made = subprocess.run(
                [sys.executable, "-m", "fleet_cli", "keys", "create", "local-admin",
                 "--role", "admin", "--project", "*", "--db", self.database],
                capture_output=True, text=True, env=self._env(), timeout=60,
            )
            if made.returncode == 0:
                return made.stdout.strip()
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not make an admin key: {made.stderr}")
            time.sleep(0.3)

    def add_replica(self) -> ReplicaProcess:
        """Start one more control plane on the same database (Postgres only)."""
        index = len(self.replicas) + 1
        replica = ReplicaProcess(free_port(), self.root / f"control-plane-{index}.log")
        self.replicas.append(replica)
        self.start_replica(replica)
        return replica

    def start_replica(self, replica: ReplicaProcess) -> None:
        replica.process = self._spawn(
            self._control_plane_args(replica.address, replica.agent_port, migrate=False),
            replica.log_file,
        )

    def _transport_args(self, agent_port: int) -> list[str]:
        if self.tls is None:
            return ["--insecure"]   # plaintext, said explicitly; on 127.0.0.1 only
        args = ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
        if self.tls.client_ca is not None:
            args += ["--tls-client-ca", str(self.tls.client_ca)]
            args += ["--agent-listen", f"127.0.0.1:{agent_port}"]
        return args

    def _control_plane_args(self, listen: str, agent_port: int, *, migrate: bool) -> list[str]:
        return [
            "control-plane",
            "--listen",
            listen,
            "--db",
            self.database,
            "--heartbeat-interval",
            str(self.heartbeat_interval_s),
            "--stale-after",
            str(self.stale_after_s),
            "--lost-after",
            str(self.lost_after_s),
            *([] if migrate else ["--no-migrate"]),
            *(["--flyte-connector"] if self.flyte_connector else []),
            *([] if self.auth else ["--no-auth"]),
            *self._transport_args(agent_port),
        ]

    def add_agent(
        self,
        name: str,
        pool_file: dict[str, Any],
        extra_args: tuple[str, ...] = (),
        control_plane: str = "",
    ) -> AgentProcess:
        folder = self.root / "agents" / name
        folder.mkdir(parents=True, exist_ok=True)
        pools_file = folder / "pools.yaml"
        pools_file.write_text(yaml.safe_dump(pool_file, sort_keys=False))
        agent = AgentProcess(
            name, pools_file, folder / "work", folder / "agent.log", extra_args=extra_args,
            control_plane=control_plane, join_token=self._enroll(pool_file),
        )
        self.agents[name] = agent
        self.start_agent(name)
        return agent

    def start_agent(self, name: str) -> None:
        agent = self.agents[name]
        agent.process = self._spawn(
            [
                "agent",
                "--control-plane",
                agent.control_plane or self.agent_address,
                "--pools",
                str(agent.pools_file),
                "--workdir",
                str(agent.workdir),
                *(["--insecure"] if self.tls is None else []),
                *(["--join-token", agent.join_token] if agent.join_token else []),
                *agent.extra_args,
            ],
            agent.log_file,
        )

    def _enroll(self, pool_file: dict[str, Any]) -> str:
        """The agent's join token: enrolled with the admin key (none needed without auth)."""
        if not self.auth:
            return ""
        dataplane = pool_file["dataplane"]
        with self.client() as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    return client.enroll_dataplane(
                        dataplane["name"], dataplane["region"], dataplane["cloud"]
                    ).join_token
                except Unavailable:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)

    def kill_control_plane(self, sig: int = signal.SIGKILL) -> None:
        """Kill (or signal) the control plane and wait for it; start_control_plane again
        brings it back on the same port and database."""
        if self.control_plane is not None:
            self.control_plane.send_signal(sig)
            self.control_plane.wait(STOP_TIMEOUT_S)

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.agents[name].process
        if process is not None:
            process.send_signal(sig)
            process.wait(STOP_TIMEOUT_S)

    def check_alive(self) -> None:
        """Raise with the log's tail if a process of the fleet died."""
        processes = [("control plane", self.control_plane, self.root / "control-plane.log")]
        processes += [(f"replica {r.address}", r.process, r.log_file) for r in self.replicas]
        processes += [(f"agent {a.name}", a.process, a.log_file) for a in self.agents.values()]
        for what, process, log_file in processes:
            if process is not None and process.poll() is not None:
                tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                raise RuntimeError(f"{what} exited with code {process.returncode}:\n{tail}")

    def stop(self) -> None:
        """Stop agents, then the control plane, then any attempt process left running."""
        from dataplane_agent import stop_all_attempts

        processes = [a.process for a in self.agents.values()]
        processes += [self.control_plane, *(replica.process for replica in self.replicas)]
        running = [p for p in processes if p is not None and p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for agent in self.agents.values():
            if agent.workdir.exists():
                stop_all_attempts(agent.workdir)

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

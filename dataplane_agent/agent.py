"""The agent process: read the pool file, adopt the attempts, keep the connection up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Coroutine
from importlib import metadata
from typing import Any

from dataplane_agent.connection import Connection
from dataplane_agent.launcher.kube_api import KubeApi, KubeConfigError
from dataplane_agent.launcher.kube_plan import ClusterSettings
from dataplane_agent.launcher.kubernetes import KubernetesLauncher
from dataplane_agent.launcher.process import ProcessLauncher, WorkdirBusy
from dataplane_agent.metrics import AgentMetrics
from dataplane_agent.pool_file import PoolFile, PoolFileError, load_pool_file
from dataplane_agent.settings import AgentSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 2


def agent_version() -> str:
    try:
        return metadata.version("flyte-fleet")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def run_agent(settings: AgentSettings) -> int:
    """Run until SIGINT/SIGTERM (0), a refused credential or fatal error (1), or a bad pool
    file (2). Attempts keep running after the agent stops; the next agent adopts them."""
    try:
        pool_file = load_pool_file(settings.pools_file)
    except PoolFileError as error:
        log.error("%s", error)
        return EXIT_CONFIG
    try:
        return asyncio.run(serve(settings, pool_file, handle_signals=True))
    except KeyboardInterrupt:   # signal handlers could not be installed (not the main thread)
        return EXIT_OK


async def serve(
    settings: AgentSettings,
    pool_file: PoolFile,
    stop: asyncio.Event | None = None,
    *,
    handle_signals: bool = False,
) -> int:
    """The agent inside a running event loop; returns when ``stop`` is set (0) or the
    control plane refuses the agent (1)."""
    stop = stop or asyncio.Event()
    signals = _install_signal_handlers(stop) if handle_signals else []
    metrics = AgentMetrics()
    connection = Connection(settings, pool_file, agent_version(), metrics)
    dataplane = pool_file.dataplane
    try:
        async with (
            _launcher(settings, pool_file, connection) as launcher,
            metrics.serving(settings.metrics_listen, launcher),
        ):
            log.info("agent for dataplane %s (%s, %s) dialing %s", dataplane.name,
                     dataplane.region, dataplane.cloud, settings.control_plane)
            log.info("Flyte tasks keep their data under %s", launcher.store_prefix)
            return await _until_stopped(connection.run(launcher), stop)
    except (WorkdirBusy, KubeConfigError) as error:
        log.error("%s", error)
        return EXIT_FATAL
    except OSError as error:
        log.error("the agent stopped: %s", error)
        return EXIT_FATAL
    except Exception:
        log.exception("the agent failed")
        return EXIT_FATAL
    finally:
        loop = asyncio.get_running_loop()
        for signum in signals:
            loop.remove_signal_handler(signum)


@contextlib.asynccontextmanager
async def _launcher(
    settings: AgentSettings, pool_file: PoolFile, connection: Connection
) -> AsyncIterator[ProcessLauncher | KubernetesLauncher]:
    """Pods when the pool file has a kubernetes section, local processes otherwise."""
    dataplane = pool_file.dataplane
    if pool_file.kubernetes is None:
        async with ProcessLauncher(
            settings.workdir, dataplane.name, pool_file.pool_reports(),
            connection.on_attempt_change, poll_interval_s=settings.poll_interval_s,
            kill_grace_s=settings.kill_grace_s, retention_s=settings.forgotten_retention_s,
            store_prefix=dataplane.store_prefix,
        ) as processes:
            yield processes
        return
    kube = pool_file.kubernetes
    api = await asyncio.to_thread(KubeApi, settings.kubeconfig)
    cluster = ClusterSettings(
        dataplane=dataplane.name, namespace=kube.namespace, rules=kube.node_rules(),
        store_prefix=dataplane.store_prefix, service_account=kube.service_account,
        default_image=kube.default_image, image_pull_grace_s=kube.image_pull_grace_s,
        unschedulable_grace_s=kube.unschedulable_grace_s, kill_grace_s=settings.kill_grace_s,
    )
    log.info("launching pods in namespace %s through %s", kube.namespace, api.host)
    try:
        pods = KubernetesLauncher(api, cluster, connection.on_attempt_change,
                                  lambda: connection.on_pools_changed(pods))
        async with pods:
            yield pods
    finally:
        api.close()


async def _until_stopped(connection_run: Coroutine[Any, Any, int], stop: asyncio.Event) -> int:
    connection = asyncio.create_task(connection_run, name="connection")
    stopped = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait({connection, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (connection, stopped):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if connection.done() and not connection.cancelled():
        return connection.result()
    return EXIT_OK


def _install_signal_handlers(stop: asyncio.Event) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signum, _stop_on_signal, stop, signum)
            installed.append(signum)
    return installed


def _stop_on_signal(stop: asyncio.Event, signum: signal.Signals) -> None:
    log.info("received %s: stopping the agent (attempts keep running)", signum.name)
    stop.set()

"""Everything ``hami demo`` runs, started in order and stopped in reverse.

In this process: the embedded cluster (API server with admission, a kube-scheduler whose profile
``hami-scheduler`` calls the HAMi extender, one fake kubelet per node), i.e. what a real cluster
provides. As separate processes, as in a real cluster: ``hami scheduler`` (extender, admission
webhook, metrics), and per node ``hami device-plugin --backend mock`` (registers on the node's
``kubelet.sock`` and publishes the node's GPUs) and ``hami monitor --backend mock`` (metrics and
an aiomonitor console).

The scheduler serves HTTPS with a certificate from a throw-away CA; the MutatingWebhookConfiguration
carries that CA as ``caBundle`` and kube-scheduler's extender configuration names it as ``caFile``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson

from hami.cli._demo_pki import DemoPki, PkiUnavailable, make_pki
from hami.cli._demo_processes import (
    ConsolePorts,
    RoleCommand,
    RoleFailed,
    RoleProcess,
    first_dead,
    free_ports,
    start_all,
    stop_all,
)
from hami.core import keys
from hami.core.errors import ConfigError
from hami.core.vendors import build_registry, managed_resources
from hami.simulator.cluster import ClusterNode, EmbeddedCluster
from hami.simulator.scenario import DEFAULT_GPU_MEMORY_MIB, DEFAULT_GPU_MODEL

logger = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
WEBHOOK_NAME: Final = "hami-webhook"
READY_TIMEOUT_S: Final = 90.0
_POLL_S: Final = 0.2
_HOOK_PATH: Final = "/usr/local"  # HAMi's default HOOK_PATH; relocated under each node's host root

KUBE_SCHEDULER_CONFIG: Final = """\
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: {scheduler_name}
extenders:
- urlPrefix: "{url}"
  filterVerb: filter
  bindVerb: bind
  nodeCacheCapable: true
  weight: 1
  httpTimeout: 30s
{tls}  managedResources:
{managed}"""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePorts:
    monitor_metrics: int
    plugin_metrics: int
    monitor_console: ConsolePorts
    plugin_console: ConsolePorts


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoLayout:
    """Where the demo's files and listeners are."""

    state_dir: Path
    scheduler_port: int
    scheduler_metrics_port: int
    scheduler_console: ConsolePorts
    node_ports: tuple[NodePorts, ...]
    pki: DemoPki | None
    pki_problem: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.pki is not None else "http"

    @property
    def scheduler_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.scheduler_port}"

    @property
    def scheduler_metrics_url(self) -> str:
        return f"http://{HOST}:{self.scheduler_metrics_port}/metrics"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"


def _prepare_state_dir(given: Path | None) -> Path:
    if given is None:
        return Path(tempfile.mkdtemp(prefix="hami-demo-"))
    path = given.absolute()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError("--state-dir", f"{path} must be empty or not exist (it is removed at exit)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _layout(state_dir: Path, nodes: int) -> DemoLayout:
    ports = iter(free_ports(5 + 8 * nodes, HOST))

    def console() -> ConsolePorts:
        return ConsolePorts(telnet=next(ports), webui=next(ports), python=next(ports))

    scheduler_port, metrics_port = next(ports), next(ports)
    scheduler_console = console()
    node_ports = tuple(
        NodePorts(
            monitor_metrics=next(ports),
            plugin_metrics=next(ports),
            monitor_console=console(),
            plugin_console=console(),
        )
        for _ in range(nodes)
    )
    try:
        pki: DemoPki | None = make_pki(state_dir / "pki")
        problem = None
    except PkiUnavailable as e:
        pki, problem = None, str(e)
    return DemoLayout(
        state_dir=state_dir,
        scheduler_port=scheduler_port,
        scheduler_metrics_port=metrics_port,
        scheduler_console=scheduler_console,
        node_ports=node_ports,
        pki=pki,
        pki_problem=problem,
    )


def kube_scheduler_config(layout: DemoLayout) -> str:
    tls = ""
    if layout.pki is not None:
        tls = f"  enableHTTPS: true\n  tlsConfig:\n    caFile: {layout.pki.ca_cert}\n"
    # The demo's scheduler runs with the default device config and no --enable-* flag: its
    # registry names every resource it schedules, so kube-scheduler leaves them all to it.
    managed = "".join(
        f"  - {{name: {name}, ignoredByScheduler: true}}\n" for name in managed_resources(build_registry())
    )
    return KUBE_SCHEDULER_CONFIG.format(
        scheduler_name=keys.DEFAULT_SCHEDULER_NAME, url=layout.scheduler_url, tls=tls, managed=managed
    )


def webhook_configuration(layout: DemoLayout) -> dict[str, Any]:
    """The chart's MutatingWebhookConfiguration, with a URL instead of a Service."""
    assert layout.pki is not None
    ignore = {"matchExpressions": [{"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]}]}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_NAME},
        "webhooks": [
            {
                "name": "vgpu.hami.io",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {"url": f"{layout.scheduler_url}/webhook", "caBundle": layout.pki.ca_bundle},
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                # Fail, not the chart's Ignore: a broken webhook must show, not silently let
                # pods reach default-scheduler.
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "Never",
                "sideEffects": "None",
                "timeoutSeconds": 10,
                "namespaceSelector": ignore,
                "objectSelector": ignore,
            }
        ],
    }


def _host_root(node: ClusterNode) -> Path:
    return node.state_dir / "host"


def role_commands(
    layout: DemoLayout, cluster: EmbeddedCluster
) -> tuple[list[RoleCommand], list[RoleCommand], list[RoleCommand]]:
    """(scheduler, device plugins, monitors) command lines."""
    kubeconfig = str(cluster.kubeconfig_path)
    logs = layout.logs_dir
    scheduler_args = [
        "--kubeconfig", kubeconfig,
        "--http_bind", f"{HOST}:{layout.scheduler_port}",
        "--metrics-bind-address", f"{HOST}:{layout.scheduler_metrics_port}",
        "--scheduler-name", keys.DEFAULT_SCHEDULER_NAME,
    ]  # fmt: skip
    if layout.pki is not None:
        pki = layout.pki
        scheduler_args += ["--cert_file", str(pki.server_cert), "--key_file", str(pki.server_key)]
    scheduler = [RoleCommand(title="scheduler", role="scheduler", args=tuple(scheduler_args),
                             log_file=logs / "scheduler.log", console=layout.scheduler_console)]  # fmt: skip
    plugins: list[RoleCommand] = []
    monitors: list[RoleCommand] = []
    for node, ports in zip(cluster.nodes, layout.node_ports, strict=True):
        host_root = _host_root(node)
        plugin_args = (
            "--backend", "mock", "--node-name", node.name, "--kubeconfig", kubeconfig,
            "--plugin-dir", str(node.plugin_dir), "--mock-gpu-file", str(node.mock_gpu_file),
            "--host-root", str(host_root), "--hook-path", _HOOK_PATH,
            "--cdi-dir", str(node.state_dir / "cdi"),
            "--metrics-bind", HOST, "--metrics-port", str(ports.plugin_metrics),
        )  # fmt: skip
        plugins.append(RoleCommand(title=f"device plugin {node.name}", role="device-plugin", args=plugin_args,
                                   log_file=logs / f"device-plugin-{node.name}.log",
                                   console=ports.plugin_console))  # fmt: skip
        containers = host_root / _HOOK_PATH.lstrip("/") / "vgpu" / "containers"
        containers.mkdir(parents=True, exist_ok=True)
        monitor_args = (
            "--backend", "mock", "--node-name", node.name, "--kubeconfig", kubeconfig,
            "--mock-gpu-file", str(node.mock_gpu_file),
            "--containers-dir", str(containers), "--scan-interval", "2",
            "--metrics-bind", HOST, "--metrics-port", str(ports.monitor_metrics),
        )  # fmt: skip
        monitors.append(RoleCommand(title=f"monitor {node.name}", role="monitor", args=monitor_args,
                                    log_file=logs / f"monitor-{node.name}.log",
                                    console=ports.monitor_console))  # fmt: skip
    return scheduler, plugins, monitors


async def _stop_even_if_cancelled(processes: Sequence[RoleProcess]) -> None:
    """Stop the roles; a cancellation meanwhile (a second Ctrl-C is handled elsewhere) waits for
    the stop to finish before it propagates, so the API server outlives its clients."""
    stopping = asyncio.ensure_future(stop_all(processes))
    try:
        await asyncio.shield(stopping)
    except asyncio.CancelledError:
        await stopping
        raise


class DemoSession:
    """A running demo: the cluster, the role processes and an HTTP client for their endpoints."""

    def __init__(
        self,
        *,
        layout: DemoLayout,
        cluster: EmbeddedCluster,
        scheduler: RoleProcess,
        plugins: Sequence[RoleProcess],
        monitors: Sequence[RoleProcess],
        http: aiohttp.ClientSession,
        gpu_model: str,
        gpu_memory_mib: int,
    ) -> None:
        self.layout = layout
        self.cluster = cluster
        self.scheduler = scheduler
        self.plugins = tuple(plugins)
        self.monitors = tuple(monitors)
        self.http = http
        self.gpu_model = gpu_model
        self.gpu_memory_mib = gpu_memory_mib
        self.webhook = False
        # The scheduler's certificate chains to the demo's CA: verified like any HTTPS client.
        self._tls: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(layout.pki.ca_cert)) if layout.pki is not None else True
        )

    @property
    def processes(self) -> tuple[RoleProcess, ...]:
        return (self.scheduler, *self.plugins, *self.monitors)

    @property
    def gpus(self) -> int:
        return sum(n.spec.gpus for n in self.cluster.nodes)

    async def _get(self, url: str) -> tuple[int, bytes]:
        try:
            async with self.http.get(url, ssl=self._tls if url.startswith("https") else True) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return 0, str(e).encode()

    def check_alive(self) -> None:
        dead = first_dead(self.processes)
        if dead is not None:
            raise RoleFailed(dead)

    async def why(self, namespace: str, name: str) -> tuple[int, Any]:
        """``hami why``'s request to the scheduler: (HTTP status, JSON body or error text)."""
        status, body = await self._get(
            f"{self.layout.scheduler_url}/why/{quote(namespace, safe='')}/{quote(name, safe='')}"
        )
        try:
            return status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return status, {"error": body.decode("utf-8", "replace")[:300]}

    async def _registered_gpus(self) -> int:
        status, body = await self._get(self.layout.scheduler_metrics_url)
        if status != 200:
            return -1
        return sum(1 for line in body.decode().splitlines() if line.startswith("GPUDeviceMemoryLimit{"))

    async def _missing(self) -> list[str]:
        missing: list[str] = []
        status, body = await self._get(f"{self.layout.scheduler_url}/readyz")
        if status != 200:
            answer = body.decode(errors="replace")[:80]
            missing.append(f"scheduler not ready ({status or 'no answer'}: {answer})")
        else:
            registered = await self._registered_gpus()
            if registered < self.gpus:
                missing.append(f"scheduler knows {max(registered, 0)} of {self.gpus} GPUs")
        for node, ports in zip(self.cluster.nodes, self.layout.node_ports, strict=True):
            status, _ = await self._get(f"http://{HOST}:{ports.monitor_metrics}/readyz")
            if status != 200:
                missing.append(f"monitor {node.name} not ready")
        return missing

    async def wait_ready(self, within: float = READY_TIMEOUT_S) -> None:
        """Until the scheduler serves and knows every GPU and every monitor is ready."""
        deadline = time.monotonic() + within
        while True:
            self.check_alive()
            missing = await self._missing()
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the demo was not ready within {within:.0f}s: {'; '.join(missing)} "
                    f"(logs in {self.layout.logs_dir})"
                )
            await asyncio.sleep(_POLL_S)

    async def serve(self, within: float = READY_TIMEOUT_S) -> None:
        """Wait until every role is ready, then register the webhook (when there are certificates)."""
        await self.wait_ready(within)
        if self.layout.pki is not None:
            await self.register_webhook()

    async def register_webhook(self) -> None:
        await self.cluster.client.create(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            webhook_configuration(self.layout),
        )
        self.webhook = True

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        *,
        nodes: int,
        gpus_per_node: int,
        state_dir: Path | None = None,
    ) -> AsyncIterator[DemoSession]:
        """Start the cluster and the role processes (see :meth:`serve` for readiness); on exit
        stop the roles, then the cluster, and remove the state dir."""
        root = _prepare_state_dir(state_dir)
        processes: list[RoleProcess] = []
        try:
            layout = _layout(root, nodes)
            config = root / "kube-scheduler.yaml"
            config.write_text(kube_scheduler_config(layout))
            async with (
                EmbeddedCluster.running(
                    nodes=nodes,
                    gpus_per_node=gpus_per_node,
                    gpu_model=DEFAULT_GPU_MODEL,
                    gpu_memory=DEFAULT_GPU_MEMORY_MIB,
                    scheduler_config=config,
                    state_dir=root / "cluster",
                ) as cluster,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            ):
                scheduler, plugins, monitors = role_commands(layout, cluster)
                try:
                    processes = await start_all([*scheduler, *plugins, *monitors])
                    session = cls(
                        layout=layout,
                        cluster=cluster,
                        scheduler=processes[0],
                        plugins=processes[1 : 1 + len(plugins)],
                        monitors=processes[1 + len(plugins) :],
                        http=http,
                        gpu_model=DEFAULT_GPU_MODEL,
                        gpu_memory_mib=DEFAULT_GPU_MEMORY_MIB,
                    )
                    yield session
                finally:
                    await _stop_even_if_cancelled(processes)
                    logger.info("role processes stopped; stopping the embedded cluster")
        finally:
            shutil.rmtree(root, ignore_errors=True)
            logger.info("demo stopped; %s removed", root)

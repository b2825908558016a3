"""The embedded cluster: API server, fake kube-scheduler(s) and one fake kubelet per node, in-process.

::

    async with EmbeddedCluster.running(nodes=3, gpus_per_node=4, scheduler_config=path) as cluster:
        cluster.api_url, cluster.kubeconfig_path, cluster.nodes[0].plugin_dir
        await cluster.create_pod(gpu_pod("p1", gpumem=3000))
        await cluster.wait_for_pod("default", "p1", lambda p: p["status"]["phase"] == "Running")

Mock GPUs are served by device-plugin processes (``hami device-plugin --backend mock``) that
register on each node's ``kubelet.sock``; the cluster only writes, per node, the mock GPU file
that backend reads (``<state>/<node>/mock-gpus.json``) and labels the Node with the GPU model,
count and memory. Nodes of other vendors (``NodeSpec.vendor``, ``hami cluster up --vendor-mix``)
are created with the registration annotations and capacity that vendor's plugin publishes
(:mod:`hami.core.vendors`), so they need no plugin process. The kube-scheduler profiles come
from a ``KubeSchedulerConfiguration``; a
``default-scheduler`` without extenders also runs (as in a real cluster beside HAMi's scheduler)
unless the configuration already has that profile.

Dynamic resources are always available, as in a Kubernetes 1.34+ cluster: the kube-schedulers
allocate ResourceClaims from ResourceSlices, a resourceclaim controller creates claims from
templates and keeps ``reservedFor``, and each kubelet watches ``<state>/<node>/plugins_registry``
for DRA plugins and prepares claims through them. ``dra=True`` also installs HAMi's DRA driver's
DeviceClass (as the chart does); ``start_dra_plugins=True`` runs one ``hami dra-plugin --backend
mock`` process per GPU node, serving that node's mock GPUs (:mod:`hami.simulator.dra_driver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hami.core.dra_translate import DRIVER_NAME
from hami.core.errors import ConfigError
from hami.simulator.dra_allocator import RESOURCE_API
from hami.simulator.dra_controller import ResourceClaimController
from hami.simulator.dra_driver import DraPluginLayout, DraPluginProcess, device_class_manifest
from hami.simulator.kubelet import FakeKubelet, KubeletSettings
from hami.simulator.kubescheduler import FakeKubeScheduler
from hami.simulator.restclient import ApiError, RestClient
from hami.simulator.scenario import DEFAULT_GPU_MEMORY_MIB, DEFAULT_GPU_MODEL, NodeSpec, node_manifest
from hami.simulator.schedconfig import DEFAULT_SCHEDULER_NAME, SchedulerConfig, load_scheduler_config
from hami.simulator.server import ApiServer, ApiServerSettings
from hami.simulator.store import Store

logger = logging.getLogger(__name__)

JsonObj = dict[str, Any]
PLUGIN_DIR_NAME: Final = "device-plugins"
MOCK_GPU_FILE: Final = "mock-gpus.json"
_MAX_SOCKET_PATH: Final = 100  # sun_path is 108 bytes; keep room for plugin socket names
_DRA_PLUGIN_START_S: Final = 60.0  # a cold Python start on a loaded CI machine


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterNode:
    name: str
    spec: NodeSpec
    kubelet: FakeKubelet
    plugin_dir: Path
    """The node's ``/var/lib/kubelet/device-plugins``: ``kubelet.sock`` and plugin sockets."""
    state_dir: Path
    mock_gpu_file: Path
    """``{"count", "model", "memory"}`` for ``hami device-plugin``, ``hami dra-plugin`` and
    ``hami monitor`` with ``--backend mock --mock-gpu-file``; each derives the same GPU UUIDs from
    the node name (:mod:`hami.core.mockgpu`)."""

    @property
    def dra_layout(self) -> DraPluginLayout:
        """Where this node's ``hami dra-plugin`` puts its sockets, CDI specs and log."""
        return DraPluginLayout(
            node_name=self.name,
            node_dir=self.state_dir,
            registry_dir=self.kubelet.dra.plugins.registry_dir,
            cdi_dir=self.kubelet.dra.cdi_dir,
            gpu_file=self.mock_gpu_file,
        )

    @property
    def has_nvidia_gpus(self) -> bool:
        return self.spec.gpus > 0 and self.spec.nvidia


def default_node_specs(
    count: int, *, gpus_per_node: int, gpu_model: str, gpu_memory_mib: int, prefix: str = "node"
) -> tuple[NodeSpec, ...]:
    if count < 0:
        raise ConfigError("nodes", f"must be >= 0, got {count}")
    return tuple(
        NodeSpec(
            name=f"{prefix}-{i + 1}", gpus=gpus_per_node, gpu_model=gpu_model, gpu_memory_mib=gpu_memory_mib
        )
        for i in range(count)
    )


class EmbeddedCluster:
    """A running embedded cluster (build it with :meth:`running`)."""

    def __init__(
        self,
        *,
        api: ApiServer,
        client: RestClient,
        nodes: tuple[ClusterNode, ...],
        schedulers: tuple[FakeKubeScheduler, ...],
        state_dir: Path,
        kubeconfig_path: Path,
        claim_controller: ResourceClaimController | None = None,
        dra: bool = False,
        start_dra_plugins: bool = False,
    ) -> None:
        self.api = api
        self.client = client
        self.nodes = nodes
        self.schedulers = schedulers
        self.state_dir = state_dir
        self.kubeconfig_path = kubeconfig_path
        self.claim_controller = claim_controller or ResourceClaimController(client)
        self.dra = dra or start_dra_plugins
        self.start_dra_plugins = start_dra_plugins
        self.dra_plugins: dict[str, DraPluginProcess] = {}
        """Node name → its ``hami dra-plugin`` process (started ones)."""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def api_url(self) -> str:
        return self.api.url

    def node(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in this cluster (nodes: {', '.join(n.name for n in self.nodes)})")

    def kubelet(self, name: str) -> FakeKubelet:
        return self.node(name).kubelet

    def describe(self) -> dict[str, Any]:
        """Where everything is (printed by ``hami cluster up``)."""
        return {
            "apiServer": self.api_url,
            "kubeconfig": str(self.kubeconfig_path),
            "stateDir": str(self.state_dir),
            "schedulers": [sorted(s.names) for s in self.schedulers],
            "extenders": sorted({e.url_prefix for s in self.schedulers for e in s.config.extenders}),
            "nodes": [
                {
                    "name": n.name,
                    "kubeletSocket": str(n.kubelet.devices.socket_path),
                    "pluginDir": str(n.plugin_dir),
                    "mockGpuFile": str(n.mock_gpu_file),
                    "gpus": n.spec.gpus,
                    "gpuModel": n.spec.gpu_model,
                    "gpuMemoryMiB": n.spec.gpu_memory_mib,
                    "vendor": n.spec.vendor,
                }
                for n in self.nodes
            ],
            "dra": self._describe_dra(),
        }

    def _describe_dra(self) -> dict[str, Any]:
        return {
            "deviceClass": DRIVER_NAME if self.dra else None,
            "plugins": [
                {
                    "node": name,
                    "pid": process.pid,
                    "log": str(process.layout.log_file),
                    "registrySocket": str(process.layout.registration_socket),
                    "cdiDir": str(process.layout.cdi_dir),
                }
                for name, process in sorted(self.dra_plugins.items())
            ],
        }

    # ---- helpers for tests and the demo ----------------------------------------------------

    async def create_pod(self, manifest: Mapping[str, Any]) -> JsonObj:
        namespace = str((manifest.get("metadata") or {}).get("namespace") or "default")
        return await self.client.create(f"/api/v1/namespaces/{namespace}/pods", dict(manifest))

    async def get_pod(self, namespace: str, name: str) -> JsonObj:
        return await self.client.get(f"/api/v1/namespaces/{namespace}/pods/{name}")

    async def wait_for_pod(
        self,
        namespace: str,
        name: str,
        predicate: Callable[[JsonObj], bool],
        *,
        within: float = 10.0,
        poll: float = 0.05,
    ) -> JsonObj:
        """Poll the pod until ``predicate(pod)``; TimeoutError names the pod and its last state."""
        deadline = time.monotonic() + within
        last: JsonObj | None = None
        while True:
            with contextlib.suppress(ApiError):
                last = await self.get_pod(namespace, name)
                if predicate(last):
                    return last
            if time.monotonic() >= deadline:
                status = (last or {}).get("status")
                raise TimeoutError(
                    f"pod {namespace}/{name} did not reach the expected state; status: {status}"
                )
            await asyncio.sleep(poll)

    # ---- lifecycle --------------------------------------------------------------------------

    def _watch_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.append(task)

        def report(done: asyncio.Task[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                logger.error("embedded cluster: %s failed", done.get_name(), exc_info=done.exception())

        task.add_done_callback(report)

    async def _stop(self) -> None:
        # Plugins first, while the API server and kubelets still answer them.
        plugins = [p.stop() for p in self.dra_plugins.values()]
        stopped = await asyncio.gather(*plugins, return_exceptions=True)
        for task in reversed(self._tasks):
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()
        failures = [r for r in (*stopped, *results) if isinstance(r, Exception)]
        if failures:
            raise failures[0]

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        *,
        nodes: int | Sequence[NodeSpec] = 3,
        gpus_per_node: int = 4,
        gpu_model: str = DEFAULT_GPU_MODEL,
        gpu_memory: int = DEFAULT_GPU_MEMORY_MIB,
        scheduler_config: SchedulerConfig | Path | None = None,
        default_scheduler: bool = True,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        kubeconfig: Path | None = None,
        api_settings: ApiServerSettings | None = None,
        store: Store | None = None,
        kubelet_settings: KubeletSettings | None = None,
        start_kubelets: bool = True,
        dra: bool = False,
        start_dra_plugins: bool = False,
    ) -> AsyncIterator[EmbeddedCluster]:
        """Start everything, yield the cluster, stop everything (in reverse order).

        ``start_kubelets=False`` creates the kubelets without running them (tests start one with
        ``cluster.start_kubelet(name)`` to hand it a ready-made batch of pods). ``dra=True``
        creates HAMi's DeviceClass; ``start_dra_plugins=True`` (implies ``dra``) also runs a
        ``hami dra-plugin`` per NVIDIA GPU node when its kubelet starts, and waits until the
        kubelet registered it and its ResourceSlice is published.
        """
        config = (
            load_scheduler_config(scheduler_config)
            if isinstance(scheduler_config, Path)
            else scheduler_config
        )
        specs = (
            default_node_specs(
                nodes, gpus_per_node=gpus_per_node, gpu_model=gpu_model, gpu_memory_mib=gpu_memory
            )
            if isinstance(nodes, int)
            else tuple(nodes)
        )
        with contextlib.ExitStack() as stack:
            if state_dir is None:
                state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hami-sim-")))
            state_dir = state_dir.absolute()
            state_dir.mkdir(parents=True, exist_ok=True)
            async with ApiServer.running(host, port, api_settings, store=store) as api:
                kubeconfig_path = api.write_kubeconfig(kubeconfig or state_dir / "kubeconfig")
                client = RestClient(api.url, user_agent="hami-embedded-cluster")
                cluster_nodes = tuple(
                    cls._make_node(client, spec, i, state_dir, kubelet_settings)
                    for i, spec in enumerate(specs)
                )
                schedulers = tuple(
                    FakeKubeScheduler(client, c)
                    for c in cls._scheduler_configs(config, default=default_scheduler)
                )
                cluster = cls(
                    api=api,
                    client=client,
                    nodes=cluster_nodes,
                    schedulers=schedulers,
                    state_dir=state_dir,
                    kubeconfig_path=kubeconfig_path,
                    dra=dra,
                    start_dra_plugins=start_dra_plugins,
                )
                try:
                    if cluster.dra:
                        await cluster._install_device_class()
                    if start_kubelets:
                        for node in cluster_nodes:
                            await cluster.start_kubelet(node.name, dra_plugin=False)
                        if cluster.start_dra_plugins:
                            await cluster._start_all_dra_plugins()
                    controller = cluster.claim_controller
                    cluster._watch_task(
                        asyncio.create_task(controller.run(), name="resourceclaim controller")
                    )
                    for scheduler in schedulers:
                        cluster._watch_task(
                            asyncio.create_task(
                                scheduler.run(), name=f"kube-scheduler {sorted(scheduler.names)}"
                            )
                        )
                    await cls._wait_ready([*(s.ready for s in schedulers), controller.ready], cluster._tasks)
                    yield cluster
                finally:
                    await cluster._stop()

    async def start_kubelet(self, name: str, *, dra_plugin: bool = True) -> FakeKubelet:
        """Run a node's kubelet (registers the Node, serves ``kubelet.sock``) and wait until it is ready.

        With ``start_dra_plugins``, the node's ``hami dra-plugin`` is started too (``dra_plugin``).
        """
        kubelet = self.kubelet(name)
        if any(t.get_name() == f"kubelet {name}" for t in self._tasks):
            return kubelet
        self._watch_task(asyncio.create_task(kubelet.run(), name=f"kubelet {name}"))
        await self._wait_ready([kubelet.ready], self._tasks)
        if dra_plugin and self.start_dra_plugins and self.node(name).has_nvidia_gpus:
            await self.start_dra_plugin(name)
        return kubelet

    # ---- DRA ----------------------------------------------------------------------------------

    async def _install_device_class(self) -> None:
        try:
            await self.client.create(f"{RESOURCE_API}/deviceclasses", device_class_manifest())
        except ApiError as exc:
            if exc.code != 409:
                raise

    async def _start_all_dra_plugins(self) -> None:
        # In parallel: each is a cold Python start.
        starts = [self.start_dra_plugin(n.name) for n in self.nodes if n.has_nvidia_gpus]
        await asyncio.gather(*starts)

    def dra_plugin_command(self, name: str) -> list[str]:
        """The ``hami dra-plugin`` command line that serves node ``name``'s mock GPUs."""
        return self.node(name).dra_layout.argv(self.kubeconfig_path)

    async def start_dra_plugin(self, name: str, *, within: float = _DRA_PLUGIN_START_S) -> DraPluginProcess:
        """Run ``hami dra-plugin`` for a node and wait until its kubelet registered it and its
        ResourceSlice exists; RuntimeError with the plugin's output if it exits or times out."""
        node = self.node(name)
        layout = node.dra_layout
        for socket in (layout.registration_socket, layout.dra_socket):
            if len(str(socket)) > _MAX_SOCKET_PATH:
                raise ConfigError(
                    "state-dir",
                    f"{self.state_dir} is too deep for the DRA plugin's sockets ({socket} is "
                    f"{len(str(socket))} bytes, the limit is about {_MAX_SOCKET_PATH}); choose a shorter one",
                )
        process = self.dra_plugins.get(name)
        if process is None or not process.running:
            process = DraPluginProcess(layout, self.dra_plugin_command(name))
            self.dra_plugins[name] = process
            await process.start()
        exited = asyncio.ensure_future(process.wait())
        ready = asyncio.ensure_future(self._dra_plugin_ready(node))
        try:
            done, _ = await asyncio.wait({exited, ready}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (exited, ready):
                waiter.cancel()
        if ready in done and not ready.cancelled():
            ready.result()
            return process
        what = f"exited with status {process.returncode}" if exited in done else f"not ready in {within:g}s"
        await process.stop()
        raise RuntimeError(f"the DRA plugin of {name} {what}; its output:\n{process.log_tail()}")

    async def _dra_plugin_ready(self, node: ClusterNode) -> None:
        await node.kubelet.dra.plugins.wait_for_driver(DRIVER_NAME, within=_DRA_PLUGIN_START_S)
        selector = {"fieldSelector": f"spec.nodeName={node.name},spec.driver={DRIVER_NAME}"}
        while not (await self.client.get(f"{RESOURCE_API}/resourceslices", selector)).get("items"):  # noqa: ASYNC110 - polls the API server
            await asyncio.sleep(0.05)

    async def stop_dra_plugin(self, name: str) -> int | None:
        """SIGTERM a node's ``hami dra-plugin`` (sockets removed, slice and checkpoint kept)."""
        process = self.dra_plugins.get(name)
        return await process.stop() if process is not None else None

    @staticmethod
    async def _wait_ready(events: Sequence[asyncio.Event], tasks: Sequence[asyncio.Task[None]]) -> None:
        """Wait for every ``ready`` event, failing fast if a component dies while starting."""
        waiters = {asyncio.ensure_future(e.wait()) for e in events}
        try:
            async with asyncio.timeout(30.0):
                while waiters:
                    done, _ = await asyncio.wait({*waiters, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                    for task in tasks:
                        if task in done:
                            task.result()  # raises the component's error
                            raise RuntimeError(f"{task.get_name()} stopped while the cluster was starting")
                    waiters -= done
        finally:
            for waiter in waiters:
                waiter.cancel()

    @staticmethod
    def _scheduler_configs(config: SchedulerConfig | None, *, default: bool) -> list[SchedulerConfig]:
        configs = [config] if config is not None else []
        served = {name for c in configs for name in c.scheduler_names}
        if default and DEFAULT_SCHEDULER_NAME not in served:
            configs.append(SchedulerConfig(scheduler_names=(DEFAULT_SCHEDULER_NAME,)))
        return configs

    @staticmethod
    def _make_node(
        client: RestClient, spec: NodeSpec, index: int, state_dir: Path, settings: KubeletSettings | None
    ) -> ClusterNode:
        node_dir = state_dir / spec.name
        plugin_dir = node_dir / PLUGIN_DIR_NAME
        socket = plugin_dir / "kubelet.sock"
        if len(str(socket)) > _MAX_SOCKET_PATH:
            raise ConfigError(
                "state-dir",
                f"{state_dir} is too deep for Unix sockets ({socket} is {len(str(socket))} bytes, "
                f"the limit is about {_MAX_SOCKET_PATH}); choose a shorter --state-dir",
            )
        plugin_dir.mkdir(parents=True, exist_ok=True)
        mock_file = node_dir / MOCK_GPU_FILE
        mock_file.write_text(json.dumps(spec.mock_gpu_document(), indent=1) + "\n")
        kubelet = FakeKubelet(
            client,
            node_manifest(spec),
            plugin_dir=plugin_dir,
            state_dir=node_dir,
            node_ip=f"172.18.{index // 250}.{index % 250 + 2}",
            pod_cidr_prefix=f"10.{244 + index // 256}.{index % 256}",
            settings=settings,
        )
        return ClusterNode(
            name=spec.name,
            spec=spec,
            kubelet=kubelet,
            plugin_dir=plugin_dir,
            state_dir=node_dir,
            mock_gpu_file=mock_file,
        )

"""A mixed-vendor embedded cluster with ``hami scheduler`` (in-process) as kube-scheduler's extender.

NVIDIA nodes get the real device-plugin agent (mock GPUs, kubelet ``Allocate``); every other
vendor's node carries what that vendor's plugin publishes (``NodeSpec.vendor``, written at node
creation) and, for the handshake vendors, a :class:`~hami.deviceplugin.vendor_mock.VendorMockAgent`
answers the scheduler's ``Requesting_<time>`` stamps as the vendor's plugin would. kube-scheduler's
``managedResources`` come from the scheduler's own vendor registry (:func:`managed_resources`), as
the chart renders them, so a pod asking only for a Cambricon or Hygon resource reaches the extender.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hami.config.settings import NetworkingSettings, WatchingSettings
from hami.core.deviceconfig import DeviceConfig
from hami.core.vendors import Health, build_registry, managed_resources, mock_vendor
from hami.deviceplugin.agent import AgentConfig, DevicePluginAgent
from hami.deviceplugin.backends.mock import MockBackend, load_gpu_file
from hami.deviceplugin.kubeapi import KubePodNodeApi
from hami.deviceplugin.vendor_mock import VendorMockAgent
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.scheduler.role import SchedulerRole
from hami.scheduler.settings import SchedulerSection, SchedulerSettings
from hami.simulator.cluster import ClusterNode, EmbeddedCluster
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.scenario import NodeSpec, vendor_node_specs
from hami.simulator.schedconfig import SchedulerConfig, parse_scheduler_config

JsonObj = dict[str, Any]

# NVIDIA + four others: a capacity vendor with its own lock (Cambricon), two handshake vendors
# with registration annotations (Hygon, Ascend 910), a capacity vendor without lock (Moore Threads).
MIX: tuple[tuple[str, int], ...] = (
    ("nvidia", 1),
    ("cambricon", 1),
    ("hygon", 1),
    ("ascend", 1),
    ("mthreads", 1),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def extender_config(url: str, managed: Sequence[str]) -> SchedulerConfig:
    """kube-scheduler's configuration as HAMi's chart renders it, managing ``managed``."""
    doc = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "profiles": [{"schedulerName": "hami-scheduler"}],
        "extenders": [
            {
                "urlPrefix": url,
                "filterVerb": "filter",
                "bindVerb": "bind",
                "nodeCacheCapable": True,
                "weight": 1,
                "httpTimeout": "30s",
                "managedResources": [{"name": n, "ignoredByScheduler": True} for n in managed],
            }
        ],
    }
    config = parse_scheduler_config(doc, source="vendor-extender")
    return dataclasses.replace(config, pod_initial_backoff=0.05, pod_max_backoff=0.3, unschedulable_flush=0.5)


def scheduler_settings(port: int, **section: Any) -> SchedulerSettings:
    defaults: dict[str, Any] = {
        "http_bind": f"127.0.0.1:{port}",
        "metrics_bind_address": "127.0.0.1:0",
        "scheduler_name": "hami-scheduler",
        "reconcile_interval": 0.3,
        "bind_wait_timeout": 10.0,
        "enable_ascend": True,
    }
    defaults.update(section)
    return SchedulerSettings(
        scheduler=SchedulerSection(**defaults),
        watching=WatchingSettings(min_timeout=30, max_timeout=60, inactivity_timeout=30),
    )


@dataclasses.dataclass
class VendorHarness:
    cluster: EmbeddedCluster
    role: SchedulerRole
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def create(self, manifest: Mapping[str, Any]) -> JsonObj:
        return await self.cluster.create_pod(manifest)

    async def wait(self, name: str, predicate: Callable[[JsonObj], bool], *, within: float = 15.0) -> JsonObj:
        return await self.cluster.wait_for_pod("default", name, predicate, within=within)

    async def node(self, name: str) -> JsonObj:
        return dict(await self.cluster.client.get(f"/api/v1/nodes/{name}"))

    async def until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            await asyncio.sleep(0.02)

    async def until_node(
        self, name: str, predicate: Callable[[dict[str, str]], bool], within: float = 10.0
    ) -> dict[str, str]:
        """Poll the Node until its annotations satisfy ``predicate``; returns them."""
        deadline = time.monotonic() + within
        while True:
            notes = dict((await self.node(name))["metadata"].get("annotations") or {})
            if predicate(notes):
                return notes
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {name}: annotations never matched: {notes}")
            await asyncio.sleep(0.05)

    async def patch_node_annotations(self, name: str, changes: Mapping[str, str | None]) -> None:
        await self.cluster.client.patch(f"/api/v1/nodes/{name}", {"metadata": {"annotations": dict(changes)}})


def _nvidia_agent(cluster: EmbeddedCluster, node: ClusterNode, state_dir: Path) -> Callable[[], Any]:
    api = HttpKubeApi(Credentials.anonymous(cluster.api_url), NetworkingSettings())
    pods = KubePodNodeApi(api)
    config = AgentConfig(
        node_name=node.name,
        plugin_dir=node.plugin_dir,
        host_root=state_dir / "host" / node.name,
        cdi_dir=state_dir / "cdi" / node.name,
        poll_interval_s=0.05,
        register_interval_s=0.5,
    )
    agent = DevicePluginAgent(config, MockBackend(load_gpu_file(node.name, node.mock_gpu_file)), pods, pods)

    async def run() -> None:
        try:
            await agent.run()
        finally:
            await api.close()

    return run


def _vendor_agent(cluster: EmbeddedCluster, spec: NodeSpec) -> Callable[[], Any]:
    api = HttpKubeApi(Credentials.anonymous(cluster.api_url), NetworkingSettings())
    agent = VendorMockAgent(
        KubePodNodeApi(api), spec.name, mock_vendor(spec.vendor), devices=spec.gpus, interval_s=0.3
    )

    async def run() -> None:
        try:
            await agent.run()
        finally:
            await api.close()

    return run


@contextlib.asynccontextmanager
async def vendor_cluster(
    mix: Sequence[tuple[str, int]] = MIX,
    *,
    devices: int = 2,
    gpu_memory: int = 24000,
    vendor_agents: bool = True,
    **section: Any,
) -> AsyncIterator[VendorHarness]:
    """The mixed cluster with the scheduler serving and every node registered in its ledger.

    ``vendor_agents=False`` runs no agent for the handshake vendors: nobody answers the
    scheduler's ``Requesting_<time>`` (tests drive the handshake annotation themselves)."""
    state_dir = Path(tempfile.mkdtemp(prefix="hv", dir="/tmp"))
    port = free_port()
    registry = build_registry(DeviceConfig(), enable_ascend=section.get("enable_ascend", True))
    config = extender_config(f"http://127.0.0.1:{port}", managed_resources(registry))
    specs = vendor_node_specs(
        mix, gpus_per_node=devices, gpu_model="NVIDIA A100-PCIE-40GB", gpu_memory_mib=gpu_memory
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        async with EmbeddedCluster.running(
            nodes=specs,
            scheduler_config=config,
            state_dir=state_dir / "c",
            kubelet_settings=KubeletSettings(heartbeat_interval=0.3),
        ) as cluster:
            for node in cluster.nodes:
                spec = node.spec
                if spec.nvidia:
                    runner = _nvidia_agent(cluster, node, state_dir)
                elif vendor_agents and mock_vendor(spec.vendor).traits.health is Health.HANDSHAKE:
                    runner = _vendor_agent(cluster, spec)
                else:
                    continue  # capacity vendors: the Node as created is all their plugin publishes
                tasks.append(asyncio.create_task(runner(), name=f"node agent {node.name}"))
            api = HttpKubeApi(Credentials.anonymous(cluster.api_url), NetworkingSettings())
            role = SchedulerRole(scheduler_settings(port, **section), api, registry=registry)
            stop = asyncio.Event()
            task = asyncio.create_task(role.run(stop), name="hami scheduler")
            try:
                harness = VendorHarness(cluster=cluster, role=role, port=port)
                async with asyncio.timeout(20):
                    while role.serving_refusal() is not None or not role.started.is_set():
                        if task.done():
                            task.result()
                        await asyncio.sleep(0.02)
                names = {s.name for s in specs}
                await harness.until(lambda: role.state.registrar.registered == names, 20)
                yield harness
            finally:
                stop.set()
                await asyncio.gather(task, return_exceptions=True)
                await api.close()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)

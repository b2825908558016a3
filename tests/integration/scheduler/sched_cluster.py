"""The embedded cluster with ``hami scheduler`` (in-process) as kube-scheduler's extender.

Nodes register either through real device-plugin agents (mock GPUs on the fake kubelets, the
production path) or by writing HAMi's registration annotation directly (``plugins=False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from hami.config.settings import LeaderElectionSettings, NetworkingSettings, WatchingSettings
from hami.deviceplugin.agent import AgentConfig, DevicePluginAgent
from hami.deviceplugin.backends.mock import MockBackend, load_gpu_file
from hami.deviceplugin.kubeapi import KubePodNodeApi
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.scheduler.role import SchedulerRole
from hami.scheduler.settings import SchedulerSection, SchedulerSettings
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.schedconfig import SchedulerConfig, load_scheduler_config

JsonObj = dict[str, Any]

CONFIG = """\
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: hami-scheduler
extenders:
- urlPrefix: "{url}"
  filterVerb: filter
  bindVerb: bind
  nodeCacheCapable: true
  weight: 1
  httpTimeout: 30s
  managedResources:
  - {{name: nvidia.com/gpu, ignoredByScheduler: true}}
  - {{name: nvidia.com/gpumem, ignoredByScheduler: true}}
  - {{name: nvidia.com/gpumem-percentage, ignoredByScheduler: true}}
  - {{name: nvidia.com/gpucores, ignoredByScheduler: true}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fast_watching() -> WatchingSettings:
    return WatchingSettings(min_timeout=30, max_timeout=60, inactivity_timeout=30)


def scheduler_settings(port: int, **section: Any) -> SchedulerSettings:
    leader_election = section.pop("leader_election", LeaderElectionSettings())
    defaults: dict[str, Any] = {
        "http_bind": f"127.0.0.1:{port}",
        "metrics_bind_address": "127.0.0.1:0",
        "scheduler_name": "hami-scheduler",
        "reconcile_interval": 0.5,
        "bind_wait_timeout": 10.0,
    }
    defaults.update(section)
    return SchedulerSettings(
        scheduler=SchedulerSection(**defaults),
        watching=fast_watching(),
        leader_election=leader_election,
    )


@dataclasses.dataclass
class Harness:
    cluster: EmbeddedCluster
    port: int
    state_dir: Path
    schedulers: list[tuple[SchedulerRole, asyncio.Task[None], asyncio.Event, HttpKubeApi]]
    agents: list[asyncio.Task[None]]

    @property
    def role(self) -> SchedulerRole:
        return self.schedulers[-1][0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start_scheduler(
        self,
        *,
        port: int | None = None,
        wait_serving: bool = True,
        identity: str | None = None,
        **section: Any,
    ) -> SchedulerRole:
        api = HttpKubeApi(Credentials.anonymous(self.cluster.api_url), NetworkingSettings())
        role = SchedulerRole(scheduler_settings(port or self.port, **section), api, identity=identity)
        stop = asyncio.Event()
        task = asyncio.create_task(role.run(stop), name="hami scheduler")
        async with asyncio.timeout(15):
            while not role.started.is_set():
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            while wait_serving and role.serving_refusal() is not None:  # noqa: ASYNC110 - a polled gate
                await asyncio.sleep(0.01)
        self.schedulers.append((role, task, stop, api))
        return role

    async def stop_scheduler(self, *, kill: bool = False, index: int = -1) -> None:
        _, task, stop, api = self.schedulers.pop(index)
        if kill:
            task.cancel()
        else:
            stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()

    async def create(self, manifest: Mapping[str, Any]) -> JsonObj:
        return await self.cluster.create_pod(manifest)

    async def wait(
        self,
        name: str,
        predicate: Callable[[JsonObj], bool],
        *,
        within: float = 15.0,
        namespace: str = "default",
    ) -> JsonObj:
        return await self.cluster.wait_for_pod(namespace, name, predicate, within=within)

    async def until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            await asyncio.sleep(0.02)


async def start_agents(cluster: EmbeddedCluster, state_dir: Path) -> list[asyncio.Task[None]]:
    tasks = []
    for node in cluster.nodes:
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
        agent = DevicePluginAgent(
            config, MockBackend(load_gpu_file(node.name, node.mock_gpu_file)), pods, pods
        )

        async def run(agent: DevicePluginAgent = agent, api: HttpKubeApi = api) -> None:
            try:
                await agent.run()
            finally:
                await api.close()

        tasks.append(asyncio.create_task(run(), name=f"device plugin {node.name}"))
    return tasks


@contextlib.asynccontextmanager
async def hami_cluster(
    *,
    nodes: int = 3,
    gpus: int = 4,
    gpu_memory: int = 24000,
    plugins: bool = True,
    start_scheduler: bool = True,
    **section: Any,
) -> AsyncIterator[Harness]:
    state_dir = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    port = free_port()
    path = state_dir / "scheduler.yaml"
    path.write_text(CONFIG.format(url=f"http://127.0.0.1:{port}"))
    config: SchedulerConfig = dataclasses.replace(
        load_scheduler_config(path), pod_initial_backoff=0.05, pod_max_backoff=0.3, unschedulable_flush=0.5
    )
    try:
        async with EmbeddedCluster.running(
            nodes=nodes,
            gpus_per_node=gpus,
            gpu_model="NVIDIA A100-PCIE-40GB",
            gpu_memory=gpu_memory,
            scheduler_config=config,
            state_dir=state_dir / "c",
            kubelet_settings=KubeletSettings(heartbeat_interval=0.3),
        ) as cluster:
            harness = Harness(cluster=cluster, port=port, state_dir=state_dir, schedulers=[], agents=[])
            try:
                if plugins:
                    harness.agents = await start_agents(cluster, state_dir)
                if start_scheduler:
                    await harness.start_scheduler(**section)
                    if plugins:
                        await harness.until(lambda: len(harness.role.state.registrar.registered) == nodes, 15)
                yield harness
            finally:
                while harness.schedulers:
                    await harness.stop_scheduler()
                for task in harness.agents:
                    task.cancel()
                await asyncio.gather(*harness.agents, return_exceptions=True)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)

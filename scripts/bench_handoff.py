#!/usr/bin/env python3
"""The bind → Allocate handoff: how many pods a node holds between bind and Allocate at once, how
long a pod spends there, and how long the device plugin's Allocate takes.

    python scripts/bench_handoff.py [--nodes 4] [--gpus 8] [--pods-per-node 16] [--allocates 200]

Part 1 runs the embedded cluster in-process: fake kube-scheduler → ``hami scheduler``'s extender
(in-process role) → bind → fake kubelet admission → ``hami device-plugin`` agents (mock GPUs,
in-process) → Allocate; a burst of small pods is created at once and every pod event is
timestamped by a watcher registered directly on the API server's store. Part 2 calls the device
plugin's ``Allocate`` over its real gRPC socket for pods already bound to a kubelet-less node (the
plugin's pod lookup, its patches and gRPC; no kubelet in the measured path). One line per figure::

    handoff in flight: max 51 pods per node between bind and Allocate (mean per-node max 51.0 over the 1
        of 4 nodes that got pods; 64 pods)
    handoff latency: bind to Allocate done p50 41.0 ms, p99 180.2 ms (64 pods)
    allocate latency: p50 6.1 ms, p99 12.3 ms (200 calls, up to 200 pods pending on the node)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import socket
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from prometheus_client import CollectorRegistry

from hami._proto import v1beta1 as pb
from hami.config.settings import NetworkingSettings, WatchingSettings
from hami.core import keys
from hami.deviceplugin.agent import AgentConfig, DevicePluginAgent
from hami.deviceplugin.backends.mock import MockBackend, load_gpu_file
from hami.deviceplugin.kubeapi import KubePodNodeApi
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.scheduler.role import SchedulerRole
from hami.scheduler.settings import SchedulerSection, SchedulerSettings
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.resources import NODES, PODS
from hami.simulator.scenario import NodeSpec, gpu_pod, node_manifest
from hami.simulator.schedconfig import load_scheduler_config
from hami.simulator.store import Store

SCHEDULER_CONFIG = """\
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
  - {{name: nvidia.com/gpucores, ignoredByScheduler: true}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextlib.asynccontextmanager
async def agent(
    node: str, plugin_dir: Path, gpu_file: Path, url: str, root: Path
) -> AsyncIterator[DevicePluginAgent]:
    api = HttpKubeApi(Credentials.anonymous(url), NetworkingSettings())
    pods = KubePodNodeApi(api)
    config = AgentConfig(
        node_name=node,
        plugin_dir=plugin_dir,
        host_root=root / "host" / node,
        cdi_dir=root / "cdi" / node,
        poll_interval_s=0.05,
        register_interval_s=1.0,
    )
    plugin = DevicePluginAgent(config, MockBackend(load_gpu_file(node, gpu_file)), pods, pods)
    task = asyncio.create_task(plugin.run(), name=f"device plugin {node}")
    try:
        yield plugin
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


@dataclasses.dataclass
class HandoffClock:
    """Per-pod bind and Allocate-done times and per-node in-flight counts, from store events."""

    bound: dict[str, float] = dataclasses.field(default_factory=dict)
    done: dict[str, float] = dataclasses.field(default_factory=dict)
    node_of: dict[str, str] = dataclasses.field(default_factory=dict)
    in_flight: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    peak: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))

    def see(self, kind: str, pod: dict[str, Any], now: float) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        node = pod.get("spec", {}).get("nodeName")
        phase_ = (meta.get("annotations") or {}).get(keys.BIND_PHASE)
        if node and phase_ == keys.BIND_PHASE_ALLOCATING and uid not in self.bound and kind != "DELETED":
            self.bound[uid], self.node_of[uid] = now, node
            self.in_flight[node] += 1
            self.peak[node] = max(self.peak[node], self.in_flight[node])
        elif uid in self.bound and uid not in self.done:
            finished = phase_ in (keys.BIND_PHASE_SUCCESS, keys.BIND_PHASE_FAILED)
            if finished or kind == "DELETED" or pod.get("status", {}).get("phase") not in (None, "Pending"):
                self.done[uid] = now
                self.in_flight[self.node_of[uid]] -= 1

    async def follow(self, store: Store) -> None:
        watcher, _ = store.watch(PODS, None, resource_version=str(store.resource_version))
        try:
            while True:
                await watcher.wakeup.wait()
                now = time.perf_counter()
                for item in watcher.take():
                    self.see(item.type, item.obj, now)
        finally:
            store.stop_watch(watcher)


async def part_handoff(args: argparse.Namespace, root: Path) -> None:
    port = free_port()
    path = root / "scheduler.yaml"
    path.write_text(SCHEDULER_CONFIG.format(url=f"http://127.0.0.1:{port}"))
    config = dataclasses.replace(
        load_scheduler_config(path), pod_initial_backoff=0.05, pod_max_backoff=0.3, unschedulable_flush=0.5
    )
    async with (
        EmbeddedCluster.running(
            nodes=args.nodes,
            gpus_per_node=args.gpus,
            scheduler_config=config,
            state_dir=root / "c",
            kubelet_settings=KubeletSettings(heartbeat_interval=1.0),
        ) as cluster,
        contextlib.AsyncExitStack() as stack,
    ):
        for node in cluster.nodes:
            await stack.enter_async_context(
                agent(node.name, node.plugin_dir, node.mock_gpu_file, cluster.api_url, root)
            )
        api = HttpKubeApi(Credentials.anonymous(cluster.api_url), NetworkingSettings())
        stack.push_async_callback(api.close)
        role = SchedulerRole(
            SchedulerSettings(
                scheduler=SchedulerSection(
                    http_bind=f"127.0.0.1:{port}",
                    metrics_bind_address="127.0.0.1:0",
                    scheduler_name="hami-scheduler",
                    reconcile_interval=0.5,
                ),
                watching=WatchingSettings(min_timeout=60, max_timeout=120, inactivity_timeout=60),
            ),
            api,
            metrics_registry=CollectorRegistry(),
        )
        stop = asyncio.Event()
        serving = asyncio.create_task(role.run(stop))
        try:
            deadline = time.monotonic() + 60
            while len(role.state.registrar.registered) < args.nodes or role.serving_refusal() is not None:
                if time.monotonic() > deadline or serving.done():
                    raise RuntimeError("the scheduler did not see every node registered within 60 s")
                await asyncio.sleep(0.05)
            clock = HandoffClock()
            follower = asyncio.create_task(clock.follow(cluster.api.store))
            total = args.nodes * args.pods_per_node
            await asyncio.gather(
                *(
                    cluster.create_pod(gpu_pod(f"burst-{i:04d}", gpumem=1000, gpucores=1))
                    for i in range(total)
                )
            )
            deadline = time.monotonic() + 120
            while len(clock.done) < total:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"only {len(clock.done)} of {total} pods got through Allocate in 120 s"
                    )
                await asyncio.sleep(0.05)
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        finally:
            stop.set()
            await asyncio.gather(serving, return_exceptions=True)
    peaks = [clock.peak[n] for n in sorted(clock.peak)]
    waits = [(clock.done[u] - clock.bound[u]) * 1000 for u in clock.done]
    print(
        f"handoff in flight: max {max(peaks)} pods per node between bind and Allocate "
        f"(mean per-node max {statistics.mean(peaks):.1f} over the {len(peaks)} of {args.nodes} nodes "
        f"that got pods; {total} pods)",
        flush=True,
    )
    print(
        f"handoff latency: bind to Allocate done p50 {percentile(waits, 0.5):.1f} ms, "
        f"p99 {percentile(waits, 0.99):.1f} ms ({len(waits)} pods)",
        flush=True,
    )


async def part_allocate(args: argparse.Namespace, root: Path) -> None:
    from hami.simulator.server import ApiServer

    name = "bench-allocate"
    spec = NodeSpec(name=name, gpus=args.gpus)
    node_dir = root / name
    plugin_dir = node_dir / "device-plugins"
    plugin_dir.mkdir(parents=True)
    gpu_file = node_dir / "mock-gpus.json"
    gpu_file.write_text(
        f'{{"count": {spec.gpus}, "model": "{spec.gpu_model}", "memory": {spec.gpu_memory_mib}}}'
    )
    async with ApiServer.running() as sim:
        sim.store.create(NODES, None, node_manifest(spec))
        async with agent(name, plugin_dir, gpu_file, sim.url, root) as plugin:
            deadline = time.monotonic() + 30
            while plugin.state is None or not (plugin_dir / "nvidia-gpu.sock").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the device plugin did not serve its socket within 30 s")
                await asyncio.sleep(0.05)
            uuids = [g.uuid for g in plugin.state.gpus]
            calls = []
            for i in range(args.allocates):
                uuid = uuids[i % len(uuids)]
                value = f"{uuid},NVIDIA,100,0:;"
                pod = gpu_pod(f"alloc-{i:05d}", gpumem=100, node_name=name)
                pod["metadata"]["annotations"] = {
                    keys.VGPU_NODE: name,
                    keys.VGPU_DEVICES_TO_ALLOCATE: value,
                    keys.VGPU_DEVICES_ALLOCATED: value,
                    keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING,
                    keys.BIND_TIME: str(int(time.time())),
                }
                sim.store.create(PODS, "default", pod)
                calls.append(uuid)
            channel = Channel(path=str(plugin_dir / "nvidia-gpu.sock"))
            stub = pb.DevicePluginStub(channel)
            timings = []
            try:
                for i, uuid in enumerate(calls):
                    request = pb.AllocateRequest(
                        container_requests=[pb.ContainerAllocateRequest(devices_ids=[f"{uuid}-{i % 10}"])]
                    )
                    started = time.perf_counter()
                    await stub.allocate(request, timeout=30)
                    timings.append((time.perf_counter() - started) * 1000)
            finally:
                channel.close()
    print(
        f"allocate latency: p50 {percentile(timings, 0.5):.1f} ms, p99 {percentile(timings, 0.99):.1f} ms "
        f"({len(timings)} calls, up to {args.allocates} pods pending on the node)",
        flush=True,
    )


async def main_async(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="hb", dir="/tmp"))
    try:
        await part_handoff(args, root)
        await part_allocate(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=8, help="mock GPUs per node")
    parser.add_argument("--pods-per-node", type=int, default=16, help="burst size per node")
    parser.add_argument("--allocates", type=int, default=200, help="Allocate calls timed in part 2")
    args = parser.parse_args()
    if min(args.nodes, args.gpus, args.pods_per_node, args.allocates) <= 0:
        parser.error("every count must be positive")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

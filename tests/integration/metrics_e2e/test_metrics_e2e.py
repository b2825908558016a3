"""Every role's /metrics and console in the embedded cluster (issue 7, "Done when").

Two mock-GPU nodes; ``hami scheduler``, one ``hami device-plugin`` per node, ``hami monitor`` on
node-1 and ``hami dra-plugin`` on node-2 run as real processes (their CLIs, as users start them).
After three pods are scheduled, the scheduler's /metrics carries HAMi 2.8's names with the values
the pods' annotations say, the monitor's host metrics name the GPUs the device plugin registered
(one mock GPU file, one set of UUIDs), every role exposes ``hami_build_info``, and each role's
aiomonitor console answers its custom commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from metrics_roles import (
    ConsolePorts,
    RoleProcess,
    Samples,
    console_run,
    labelsets,
    poll,
    scrape,
    value,
)
from monitor_telnet import free_ports

from hami.core import keys
from hami.core.mockgpu import mock_gpu_uuid
from hami.metrics.catalog import ROLE_METRICS
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.scenario import gpu_pod
from hami.simulator.schedconfig import load_scheduler_config

pytestmark = pytest.mark.slow

MIB = 1048576
GPU_MEMORY = 24000
BUILD_LABELS = {"version", "revision", "build_date", "python_version", "platform"}
REMOVED_IN_28 = ("vGPUPodsDeviceAllocated", "vGPUMemoryPercentage", "vGPUCorePercentage")

SCHEDULER_CONFIG = """\
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: hami-scheduler
extenders:
- urlPrefix: "http://127.0.0.1:{port}"
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

PODS = {  # name -> (gpumem MiB, gpucores, extra annotations)
    "p1": (4096, 30, {}),
    "p2": (2000, 0, {}),
    "p3": (1000, 10, {keys.NODE_SCHEDULER_POLICY: "spread"}),
}


@dataclasses.dataclass
class Roles:
    cluster: EmbeddedCluster
    root: Path
    scheduler_url: str
    scheduler_metrics: str
    plugin_metrics: dict[str, str]
    monitor_metrics: str
    dra_metrics: str
    consoles: dict[str, ConsolePorts]
    processes: list[RoleProcess]


@dataclasses.dataclass(frozen=True)
class Placed:
    node: str
    uuid: str
    memory: int
    cores: int
    uid: str


def containers_dir(root: Path, node: str) -> Path:
    """The node's HAMi-core cache directories (the device plugin's ``--host-root`` relocates them)."""
    return root / "host" / node / "usr" / "local" / "vgpu" / "containers"


@pytest.fixture
async def roles() -> AsyncIterator[Roles]:
    # Short path: device-plugin sockets live below it (sun_path is 108 bytes).
    root = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    http, sched_metrics, dp1, dp2, monitor_port, dra_port = free_ports(6)
    consoles = {role: ConsolePorts.free() for role in ("scheduler", "node-1", "node-2", "monitor", "dra")}
    config_path = root / "scheduler.yaml"
    config_path.write_text(SCHEDULER_CONFIG.format(port=http))
    config = dataclasses.replace(
        load_scheduler_config(config_path),
        pod_initial_backoff=0.05,
        pod_max_backoff=0.3,
        unschedulable_flush=0.5,
    )
    processes: list[RoleProcess] = []
    try:
        async with EmbeddedCluster.running(
            nodes=2,
            gpus_per_node=2,
            gpu_model="NVIDIA A100-PCIE-40GB",
            gpu_memory=GPU_MEMORY,
            scheduler_config=config,
            state_dir=root / "c",
            kubelet_settings=KubeletSettings(heartbeat_interval=0.3),
        ) as cluster:
            kubeconfig = str(cluster.kubeconfig_path)
            logs = root / "logs"
            processes.append(
                RoleProcess(
                    "scheduler",
                    [
                        "scheduler", "--kubeconfig", kubeconfig, "--http_bind", f"127.0.0.1:{http}",
                        "--metrics-bind-address", f"127.0.0.1:{sched_metrics}",
                        "--scheduler-name", "hami-scheduler", "--reconcile-interval", "0.5",
                        *consoles["scheduler"].flags(),
                    ],
                    logs / "scheduler.log",
                )
            )  # fmt: skip
            for node, port in (("node-1", dp1), ("node-2", dp2)):
                n = cluster.node(node)
                processes.append(
                    RoleProcess(
                        f"device-plugin {node}",
                        [
                            "device-plugin", "--backend", "mock", "--node-name", node,
                            "--plugin-dir", str(n.plugin_dir), "--kubeconfig", kubeconfig,
                            "--mock-gpu-file", str(n.mock_gpu_file), "--host-root", str(root / "host" / node),
                            "--cdi-dir", str(root / "cdi" / node), "--register-interval", "0.5",
                            "--metrics-bind", "127.0.0.1", "--metrics-port", str(port),
                            *consoles[node].flags(),
                        ],
                        logs / f"dp-{node}.log",
                    )
                )  # fmt: skip
            processes.append(
                RoleProcess(
                    "monitor node-1",
                    [
                        "monitor", "--node-name", "node-1", "--kubeconfig", kubeconfig, "--backend", "mock",
                        "--mock-gpu-file", str(cluster.node("node-1").mock_gpu_file),
                        "--containers-dir", str(containers_dir(root, "node-1")),
                        "--metrics-bind", "127.0.0.1", "--metrics-port", str(monitor_port),
                        "--scan-interval", "0.3", "--mig-lock-file", str(root / "no-mig.lock"),
                        *consoles["monitor"].flags(),
                    ],
                    logs / "monitor.log",
                )
            )  # fmt: skip
            layout = cluster.node("node-2").dra_layout
            processes.append(
                RoleProcess(
                    "dra-plugin node-2",
                    [
                        "dra-plugin", "--backend", "mock", "--node-name", "node-2",
                        "--kubeconfig", kubeconfig,
                        "--plugin-dir", str(layout.plugin_dir), "--registry-dir", str(layout.registry_dir),
                        "--cdi-dir", str(layout.cdi_dir), "--host-root", str(root / "host" / "node-2"),
                        "--mock-gpu-file", str(layout.gpu_file),
                        "--metrics-bind", "127.0.0.1", "--metrics-port", str(dra_port),
                        *consoles["dra"].flags(),
                    ],
                    logs / "dra.log",
                )
            )  # fmt: skip
            await asyncio.gather(*(p.start() for p in processes))
            try:
                yield Roles(
                    cluster=cluster,
                    root=root,
                    scheduler_url=f"http://127.0.0.1:{http}",
                    scheduler_metrics=f"http://127.0.0.1:{sched_metrics}",
                    plugin_metrics={"node-1": f"http://127.0.0.1:{dp1}", "node-2": f"http://127.0.0.1:{dp2}"},
                    monitor_metrics=f"http://127.0.0.1:{monitor_port}",
                    dra_metrics=f"http://127.0.0.1:{dra_port}",
                    consoles=consoles,
                    processes=processes,
                )
            finally:
                codes = await asyncio.gather(*(p.stop() for p in processes))
                failed = [(p, code) for p, code in zip(processes, codes, strict=True) if code != 0]
                assert not failed, "\n".join(f"{p.name} exited {code}:\n{p.output()}" for p, code in failed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def allocation(pod: dict[str, Any]) -> Placed:
    raw = pod["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED]
    [entry] = raw.rstrip(":;").split(":")
    uuid, _vendor, memory, cores = entry.split(",")
    return Placed(
        node=pod["spec"]["nodeName"],
        uuid=uuid,
        memory=int(memory),
        cores=int(cores),
        uid=pod["metadata"]["uid"],
    )


def admission_review(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": f"review-{name}",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "object": gpu_pod(name, gpumem=1000),
        },
    }


def check_build_info(samples: Samples, role: str) -> None:
    [(labels, one)] = samples["hami_build_info"]
    assert one == 1.0 and set(labels) == BUILD_LABELS, (role, labels)
    assert labels["python_version"].count(".") == 2 and "/" in labels["platform"], labels
    names = {spec.name for spec in ROLE_METRICS[role]}
    exposed = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name in samples}
    histograms = {spec.name for spec in ROLE_METRICS[role] if spec.type == "histogram"}
    assert histograms <= exposed, (role, histograms - exposed)
    assert "hami_build_info" in names


async def test_every_role_serves_hami_28_metrics_and_its_console(roles: Roles, h100_fixtures: Path) -> None:
    cluster = roles.cluster
    async with aiohttp.ClientSession() as session:
        # Both device plugins registered their mock GPUs; the scheduler sees 4 devices.
        async def registered() -> Samples | None:
            samples = await scrape(session, roles.scheduler_metrics)
            return samples if len(samples.get("GPUDeviceMemoryLimit", [])) == 4 else None

        await poll(registered, within=60, what="4 registered GPUs in the scheduler", alive=roles.processes)
        quota = {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "gpu", "namespace": "default"},
            "spec": {"hard": {"limits.nvidia.com/gpumem": "100000", "limits.nvidia.com/gpucores": "300"}},
        }
        await cluster.client.create("/api/v1/namespaces/default/resourcequotas", quota)
        for name, (memory, cores, annotations) in PODS.items():
            await cluster.create_pod(
                gpu_pod(name, gpumem=memory, gpucores=cores or None, annotations=annotations)
            )
        placed: dict[str, Placed] = {}
        for name in PODS:
            pod = await cluster.wait_for_pod(
                "default", name, lambda p: p["status"].get("phase") == "Running", within=30
            )
            placed[name] = allocation(pod)
        assert placed["p1"].node == "node-1" and placed["p3"].node == "node-2"  # binpack tie, then spread
        for name, (memory, cores, _) in PODS.items():
            assert (placed[name].memory, placed[name].cores) == (memory, cores)

        # One admission review through the scheduler's webhook (the embedded API server has none).
        async with session.post(roles.scheduler_url + "/webhook", json=admission_review("w1")) as resp:
            assert resp.status == 200 and (await resp.json())["response"]["uid"] == "review-w1"

        # --- scheduler (:9395): HAMi 2.8's names, values from the pods' annotations.
        async def quota_counted() -> Samples | None:
            samples = await scrape(session, roles.scheduler_metrics)
            used = labelsets(samples, "QuotaUsed")
            return samples if len(used) == 2 and len(samples.get("vGPUMemoryAllocated", [])) == 3 else None

        sched = await poll(quota_counted, within=15, what="quota and pod rows in the scheduler's /metrics")
        check_build_info(sched, "scheduler")
        assert not set(REMOVED_IN_28) & set(sched)
        for name, p in placed.items():
            labels = {"podnamespace": "default", "podname": name, "nodename": p.node, "containeridx": "0"}
            assert (
                value(sched, "vGPUMemoryAllocated", **labels, deviceuuid=p.uuid, zone="vGPU")
                == p.memory * MIB
            )
            assert value(sched, "vGPUCoreAllocated", **labels, deviceuuid=p.uuid) == p.cores
        for node in ("node-1", "node-2"):
            for index in range(2):
                uuid = mock_gpu_uuid(node, index)
                on = [p for p in placed.values() if p.uuid == uuid]
                key = {"nodeid": node, "deviceuuid": uuid, "deviceidx": str(index), "zone": "vGPU"}
                used_mem, used_cores = sum(p.memory for p in on), sum(p.cores for p in on)
                assert value(sched, "GPUDeviceMemoryLimit", **key) == GPU_MEMORY * MIB
                assert value(sched, "GPUDeviceCoreLimit", **key) == 100
                assert (
                    value(sched, "GPUDeviceMemoryAllocated", **key, devicecores=str(used_cores))
                    == used_mem * MIB
                )
                assert value(sched, "GPUDeviceCoreAllocated", **key) == used_cores
                assert value(sched, "GPUDeviceSharedNum", **key) == len(on)
                assert value(sched, "nodeGPUMemoryPercentage", **key) == pytest.approx(used_mem / GPU_MEMORY)
                overview = {
                    "devicecores": str(used_cores),
                    "sharedcontainers": str(len(on)),
                    "devicememorylimit": str(GPU_MEMORY),
                    "devicetype": "NVIDIA A100-PCIE-40GB",
                }
                assert value(sched, "nodeGPUOverview", **key, **overview) == used_mem * MIB
        total_mem = sum(m for m, _, _ in PODS.values())
        total_cores = sum(c for _, c, _ in PODS.values())
        quota_labels = {"quotanamespace": "default", "zone": "vGPU"}
        assert (
            value(sched, "QuotaUsed", **quota_labels, quotaName="nvidia.com/gpumem", limit="100000")
            == total_mem
        )
        assert (
            value(sched, "QuotaUsed", **quota_labels, quotaName="nvidia.com/gpucores", limit="300")
            == total_cores
        )
        assert value(sched, "hami_filter_duration_seconds_count") >= len(PODS)
        assert value(sched, "hami_bind_duration_seconds_count") == len(PODS)
        assert value(sched, "hami_webhook_duration_seconds_count") == 1

        # --- device plugins: build info and one Allocate per pod of the node.
        for node, url in roles.plugin_metrics.items():
            plugin = await scrape(session, url)
            check_build_info(plugin, "device-plugin")
            allocated = sum(1 for p in placed.values() if p.node == node)
            assert value(plugin, "hami_allocate_duration_seconds_count") == allocated, node
            async with session.get(url + "/readyz") as resp:
                assert resp.status == 200

        # --- monitor (:9394) on node-1: HAMi-core's region of p1's container (a captured 4 GiB limit).
        p1 = placed["p1"]
        container_dir = containers_dir(roles.root, "node-1") / f"{p1.uid}_main"
        assert container_dir.is_dir(), "the device plugin creates the container's cache directory at Allocate"
        (container_dir / "vgpu.cache").write_bytes((h100_fixtures / "vgpu_c_1_hold.cache").read_bytes())

        async def region_seen() -> Samples | None:
            samples = await scrape(session, roles.monitor_metrics)
            return samples if labelsets(samples, "vGPU_device_memory_limit_in_bytes", podname="p1") else None

        mon = await poll(
            region_seen, within=20, what="p1's region in the monitor's /metrics", alive=roles.processes
        )
        check_build_info(mon, "monitor")
        ctr = {
            "podnamespace": "default",
            "podname": "p1",
            "ctrname": "main",
            "vdeviceid": "0",
            "zone": "vGPU",
        }
        assert value(mon, "vGPU_device_memory_limit_in_bytes", **ctr) == p1.memory * MIB
        # Host GPUs name the GPUs the device plugin registered and the scheduler allocates from.
        host = {labels["deviceuuid"] for labels in labelsets(mon, "HostGPUMemoryUsage", node="node-1")}
        registered_node1 = {
            labels["deviceuuid"] for labels in labelsets(sched, "GPUDeviceMemoryLimit", nodeid="node-1")
        }
        assert host == registered_node1 == {mock_gpu_uuid("node-1", 0), mock_gpu_uuid("node-1", 1)}
        assert p1.uuid in host
        assert value(mon, "HostGPUMemoryUsage", node="node-1", deviceuuid=p1.uuid) == 0.0

        # --- DRA plugin on node-2: build info and its prepare histogram.
        dra = await poll(
            lambda: scrape(session, roles.dra_metrics), within=15, what="the DRA plugin's /metrics"
        )
        check_build_info(dra, "dra-plugin")
        assert value(dra, "hami_dra_prepare_duration_seconds_count") == 0

    # --- consoles: each role's custom commands over telnet.
    ledger_all, ledger_node, inflight, handoffs, informers, leader = await console_run(
        roles.consoles["scheduler"].telnet,
        "ledger",
        "ledger node-1",
        "inflight",
        "handoffs",
        "informers",
        "leader",
    )
    assert "node-1: 2 devices, mem 6096/48000MiB, 2 tasks, 2 pods" in ledger_all
    assert "node-2: 2 devices, mem 1000/48000MiB, 1 tasks, 1 pods" in ledger_all
    assert (
        f"{p1.uuid}" in ledger_node
        and "default/p1 [committed]" in ledger_node
        and "default/p2" in ledger_node
    )
    assert "default/p3" not in ledger_node
    assert "no assumed reservations" in inflight
    assert "no pod between bind and Allocate" in handoffs
    assert "scheduler pods: synced=True" in informers and "last change" in informers
    assert "leader election disabled: this replica always leads; serving /filter and /bind" in leader

    devices, registration, pending = await console_run(
        roles.consoles["node-1"].telnet, "devices", "registration", "pending"
    )
    assert "node node-1: 2 GPUs as nvidia.com/gpu" in devices and mock_gpu_uuid("node-1", 1) in devices
    assert "kubelet: registered as nvidia.com/gpu" in registration
    assert "0 pods wait for Allocate" in pending and "default/p1: not waiting" in pending

    [containers] = await console_run(roles.consoles["monitor"].telnet, "containers")
    assert "default/p1/main" in containers

    claims, gpus = await console_run(roles.consoles["dra"].telnet, "claims", "gpus")
    assert "0 prepared claims" in claims
    assert mock_gpu_uuid("node-2", 0) in gpus and mock_gpu_uuid("node-2", 1) in gpus

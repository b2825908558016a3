"""The whole agent: mock backend, in-memory API, fake kubelet on real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hami._proto import v1beta1 as pb
from hami.core.node_annotations import decode_node_devices
from hami.deviceplugin.agent import AgentConfig, DevicePluginAgent
from hami.deviceplugin.allocate import AllocateSettings
from hami.deviceplugin.backend import Topology
from hami.deviceplugin.backends.mock import MockBackend, mock_gpus
from hami.deviceplugin.capacity import CapacityNames
from hami.deviceplugin.cdi import validate_spec
from hami.deviceplugin.memkube import InMemoryKube, allocating_pod
from hami.deviceplugin.virtual import NodeDeviceSettings

NODE = "node-1"


async def until(predicate: Any, wait_s: float = 5.0) -> None:
    """Poll ``predicate``: the in-memory API has no watch to wait on."""
    async with asyncio.timeout(wait_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def register_value(kube: InMemoryKube) -> str | None:
    return kube.node(NODE)["metadata"].get("annotations", {}).get("hami.io/node-nvidia-register")


async def start_agent(config: AgentConfig, backend: MockBackend, kube: InMemoryKube) -> asyncio.Task[None]:
    agent = DevicePluginAgent(config, backend, kube, kube)
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.started.wait(), 5)
    return task


@pytest.fixture
def kube() -> InMemoryKube:
    k = InMemoryKube()
    k.put_node(
        {"metadata": {"name": NODE, "annotations": {}}, "status": {"capacity": {"nvidia.com/gpu": "20"}}}
    )
    return k


@pytest.fixture
async def stopper() -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def config(sock_dir: Path, **kw: Any) -> AgentConfig:
    return AgentConfig(
        node_name=NODE,
        plugin_dir=sock_dir,
        host_root=sock_dir / "host",
        cdi_dir=sock_dir / "cdi",
        poll_interval_s=0.05,
        register_interval_s=0.2,
        **kw,
    )


async def test_xid_reaches_list_and_watch_and_annotation(
    kube: InMemoryKube, kubelet: Any, sock_dir: Path, stopper: list[asyncio.Task[None]]
) -> None:
    gpus = mock_gpus(NODE, 2, model="NVIDIA A100-PCIE-40GB", memory_mib=40960)
    backend = MockBackend(gpus)
    stopper.append(await start_agent(config(sock_dir), backend, kube))
    await asyncio.wait_for(kubelet.registered.wait(), 5)
    await kubelet.wait_for(lambda: len(kubelet.devices) == 20)
    await until(lambda: register_value(kube) is not None)
    devices = decode_node_devices(register_value(kube) or "")
    assert [(d.id, d.index, d.count, d.devmem, d.health) for d in devices] == [
        (gpus[0].uuid, 0, 10, 40960, True),
        (gpus[1].uuid, 1, 10, 40960, True),
    ]

    assert backend.inject_xid(gpus[1].uuid, 79)
    await kubelet.wait_for(lambda: sum(d.health == "Unhealthy" for d in kubelet.devices) == 10)
    assert {d.id.rpartition("-")[0] for d in kubelet.devices if d.health == "Unhealthy"} == {gpus[1].uuid}
    await until(lambda: not decode_node_devices(register_value(kube) or "")[1].health)
    assert '"health"' not in json.dumps(json.loads(register_value(kube) or "")[1])

    assert not backend.inject_xid(gpus[0].uuid, 43)  # application XID: ignored
    backend.recover(gpus[1].uuid)
    await kubelet.wait_for(lambda: all(d.health == "Healthy" for d in kubelet.devices))
    await until(lambda: all(d.health for d in decode_node_devices(register_value(kube) or "")))


async def test_annotation_repaired_and_not_rewritten_when_unchanged(
    kube: InMemoryKube, kubelet: Any, sock_dir: Path, stopper: list[asyncio.Task[None]]
) -> None:
    stopper.append(await start_agent(config(sock_dir), MockBackend(mock_gpus(NODE, 1)), kube))
    await until(lambda: register_value(kube) is not None)
    value = register_value(kube)
    await asyncio.sleep(0.5)  # a few cycles
    assert len([p for p in kube.patches if p.kind == "node"]) == 1
    await kube.patch_node(NODE, {"metadata": {"annotations": {"hami.io/node-nvidia-register": None}}})
    await until(lambda: register_value(kube) == value)


async def test_cdi_mode_writes_spec_and_returns_annotations(
    kube: InMemoryKube, kubelet: Any, sock_dir: Path, stopper: list[asyncio.Task[None]]
) -> None:
    gpus = mock_gpus(NODE, 2)
    cfg = config(
        sock_dir,
        allocate=AllocateSettings(device_list_strategies=("cdi-annotations",)),
        node=NodeDeviceSettings(split_count=2),
    )
    stopper.append(await start_agent(cfg, MockBackend(gpus), kube))
    spec = json.loads((sock_dir / "cdi/k8s.device-plugin.nvidia.com-gpu.json").read_text())
    assert validate_spec(spec) == []
    assert [d["name"] for d in spec["devices"]] == [gpus[0].uuid, gpus[1].uuid, "all"]
    await asyncio.wait_for(kubelet.registered.wait(), 5)
    kube.put_pod(allocating_pod("demo", NODE, f"{gpus[1].uuid},NVIDIA,4096,25:;"))
    stub = pb.DevicePluginStub(kubelet.plugin_channel("nvidia-gpu.sock"))
    response = await stub.allocate(
        pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=[f"{gpus[1].uuid}-1"])]
        )
    )
    (container,) = response.container_responses
    assert "NVIDIA_VISIBLE_DEVICES" not in container.envs
    ((key, names),) = container.annotations.items()
    assert key.startswith("cdi.k8s.io/nvidia-device-plugin_") and len(key.split("_", 1)[1]) == 36
    assert names == f"k8s.device-plugin.nvidia.com/gpu={gpus[1].uuid}"
    assert names.split("=", 1)[1] in {d["name"] for d in spec["devices"]}
    assert container.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "4096m"


async def test_mock_capacity_and_topology_score(
    kube: InMemoryKube, kubelet: Any, sock_dir: Path, stopper: list[asyncio.Task[None]]
) -> None:
    gpus = mock_gpus(NODE, 2, memory_mib=32768)
    topology = Topology(scores={gpus[0].uuid: {gpus[1].uuid: 250}, gpus[1].uuid: {gpus[0].uuid: 250}})
    cfg = config(sock_dir, mock_capacity=CapacityNames(), topology_score=True)
    stopper.append(await start_agent(cfg, MockBackend(gpus, topology=topology), kube))
    await until(lambda: "nvidia.com/gpumem" in kube.node(NODE)["status"].get("allocatable", {}))
    status = kube.node(NODE)["status"]
    assert status["capacity"]["nvidia.com/gpumem"] == "65536"
    assert status["allocatable"]["nvidia.com/gpucores"] == "200"
    assert status["capacity"]["nvidia.com/gpumem-percentage"] == "200"
    score = kube.node(NODE)["metadata"]["annotations"]["hami.io/node-nvidia-score"]
    assert json.loads(score) == [
        {"uuid": gpus[0].uuid, "score": {gpus[1].uuid: 250}},
        {"uuid": gpus[1].uuid, "score": {gpus[0].uuid: 250}},
    ]


async def test_filtered_node_offers_only_remaining_gpus(
    kube: InMemoryKube, kubelet: Any, sock_dir: Path, stopper: list[asyncio.Task[None]]
) -> None:
    gpus = mock_gpus(NODE, 3)
    cfg = config(sock_dir, node=NodeDeviceSettings(split_count=2, filter_indexes=frozenset({1})))
    stopper.append(await start_agent(cfg, MockBackend(gpus), kube))
    await kubelet.wait_for(lambda: len(kubelet.devices) == 4)
    assert {d.id.rpartition("-")[0] for d in kubelet.devices} == {gpus[0].uuid, gpus[2].uuid}
    await until(lambda: register_value(kube) is not None)
    assert [d.index for d in decode_node_devices(register_value(kube) or "")] == [0, 2]

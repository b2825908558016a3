"""The DevicePlugin servicer through grpclib.testing.ChannelFor, with the in-memory API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.testing import ChannelFor

from hami._proto import v1beta1 as pb
from hami.deviceplugin.allocate import AllocateSettings, HostLayout
from hami.deviceplugin.backend import HealthEvent, PhysicalGpu
from hami.deviceplugin.memkube import InMemoryKube, allocating_pod
from hami.deviceplugin.podlookup import HamiPendingPodSource, KubeAllocationRecorder
from hami.deviceplugin.service import DevicePluginService
from hami.deviceplugin.state import DeviceState
from hami.deviceplugin.virtual import NodeDeviceSettings

NODE = "gpu-node-1"
A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
C = "GPU-cccccccc-0000-0000-0000-000000000003"
UID = "5d1c7c2e-0b7e-4c2a-9f4a-2b8f6f1e9a10"
CACHE_ID = "3f2c9a4e-6d7b-4f0e-9a51-7c2d1e8b6a90"
LOCK = "2026-02-01T08:00:00Z,default,demo"
GPUS = tuple(
    PhysicalGpu(uuid=u, index=i, name="NVIDIA A100-PCIE-40GB", memory_mib=40960)
    for i, u in enumerate((A, B, C))
)


@dataclass
class Plugin:
    kube: InMemoryKube
    state: DeviceState
    service: DevicePluginService
    stub: pb.DevicePluginStub
    root: Path


def make_kube(lock: str | None = LOCK) -> InMemoryKube:
    kube = InMemoryKube()
    kube.put_node({"metadata": {"name": NODE, "annotations": {"hami.io/mutex.lock": lock} if lock else {}}})
    return kube


@pytest.fixture
async def plugin(tmp_path: Path) -> AsyncIterator[Plugin]:
    kube = make_kube()
    (tmp_path / "usr/local/vgpu").mkdir(parents=True)
    (tmp_path / "usr/local/vgpu/libvgpu.so.v2.8.0").write_bytes(b"")
    state = DeviceState(GPUS, NodeDeviceSettings(split_count=10))
    settings = AllocateSettings()
    service = DevicePluginService(
        node_name=NODE,
        state=state,
        allocate_settings=settings,
        pods=HamiPendingPodSource(kube, kube),
        recorder=KubeAllocationRecorder(kube, kube, retry_delay_s=0),
        host=HostLayout(settings, root=tmp_path),
        new_id=lambda: CACHE_ID,
    )
    async with ChannelFor([service]) as channel:
        yield Plugin(kube, state, service, pb.DevicePluginStub(channel), tmp_path)
    service.close_streams()


def request(*ids: str) -> pb.AllocateRequest:
    return pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=list(ids))])


async def test_options_and_prestart(plugin: Plugin) -> None:
    options = await plugin.stub.get_device_plugin_options(pb.Empty())
    assert options == pb.DevicePluginOptions(
        pre_start_required=False, get_preferred_allocation_available=True
    )
    assert await plugin.stub.pre_start_container(pb.PreStartContainerRequest(devices_ids=[f"{A}-0"])) == (
        pb.PreStartContainerResponse()
    )


async def test_worked_example_through_grpc(plugin: Plugin) -> None:
    plugin.kube.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,3000,30:{B},NVIDIA,3000,30:;", uid=UID))
    response = await plugin.stub.allocate(request(f"{A}-4", f"{C}-0"))
    (container,) = response.container_responses
    assert container.envs == {
        "NVIDIA_VISIBLE_DEVICES": f"{A},{B}",
        "CUDA_DEVICE_MEMORY_LIMIT_0": "3000m",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "3000m",
        "CUDA_DEVICE_SM_LIMIT": "30",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": f"/usr/local/vgpu/{CACHE_ID}.cache",
        "LIBCUDA_LOG_LEVEL": "1",
    }
    assert [(m.container_path, m.host_path, m.read_only) for m in container.mounts] == [
        ("/usr/local/vgpu/libvgpu.so", "/usr/local/vgpu/libvgpu.so.v2.8.0", True),
        ("/usr/local/vgpu", f"/usr/local/vgpu/containers/{UID}_app", False),
        ("/tmp/vgpulock", "/tmp/vgpulock", False),
        ("/etc/ld.so.preload", "/usr/local/vgpu/ld.so.preload", True),
    ]
    assert container.annotations == {} and container.cdi_devices == [] and container.devices == []
    # Side effects (§4.8): annotation consumed, bind phase success, lock released, cache dir created.
    annotations = plugin.kube.pod("default", "demo")["metadata"]["annotations"]
    assert annotations["hami.io/vgpu-devices-to-allocate"] == ";"
    assert annotations["hami.io/bind-phase"] == "success"
    assert "hami.io/mutex.lock" not in plugin.kube.node(NODE)["metadata"]["annotations"]
    assert (plugin.root / f"usr/local/vgpu/containers/{UID}_app").is_dir()
    assert (plugin.root / "tmp/vgpulock").is_dir()


async def test_two_gpu_containers_get_their_own_devices_in_order(plugin: Plugin) -> None:
    value = f";{A},NVIDIA,1000,10:{C},NVIDIA,1000,10:;{B},NVIDIA,2000,20:;"
    plugin.kube.put_pod(allocating_pod("demo", NODE, value, uid=UID, containers=("sidecar", "tp", "worker")))
    first = (await plugin.stub.allocate(request(f"{A}-0", f"{C}-1"))).container_responses[0]
    assert first.envs["NVIDIA_VISIBLE_DEVICES"] == f"{A},{C}"
    assert first.mounts[1].host_path.endswith(f"{UID}_tp")
    pod = plugin.kube.pod("default", "demo")["metadata"]["annotations"]
    assert pod["hami.io/vgpu-devices-to-allocate"] == f";;{B},NVIDIA,2000,20:;"
    assert pod["hami.io/bind-phase"] == "allocating"  # one container still pending
    assert plugin.kube.node(NODE)["metadata"]["annotations"].get("hami.io/mutex.lock") == LOCK
    second = (await plugin.stub.allocate(request(f"{B}-9"))).container_responses[0]
    assert second.envs["NVIDIA_VISIBLE_DEVICES"] == B
    assert second.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "2000m"
    assert second.mounts[1].host_path.endswith(f"{UID}_worker")
    assert plugin.kube.pod("default", "demo")["metadata"]["annotations"]["hami.io/bind-phase"] == "success"


async def test_malformed_annotation_fails_that_allocate_only(plugin: Plugin) -> None:
    plugin.kube.put_pod(allocating_pod("demo", NODE, "GPU-a,NVIDIA,lots,30:;"))
    with pytest.raises(GRPCError) as info:
        await plugin.stub.allocate(request(f"{A}-0"))
    assert info.value.status == Status.INVALID_ARGUMENT
    assert "default/demo" in str(info.value.message)
    assert "hami.io/vgpu-devices-to-allocate" in str(info.value.message)
    assert "usedmem 'lots'" in str(info.value.message)
    assert plugin.kube.pod("default", "demo")["metadata"]["annotations"]["hami.io/bind-phase"] == "failed"
    assert "hami.io/mutex.lock" not in plugin.kube.node(NODE)["metadata"]["annotations"]
    # The plugin keeps serving.
    plugin.kube.put_pod(allocating_pod("next", NODE, f"{A},NVIDIA,100,0:;"))
    ok = await plugin.stub.allocate(request(f"{A}-1"))
    assert ok.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == A


async def test_no_pod_and_unknown_ids_are_clear_errors(plugin: Plugin) -> None:
    with pytest.raises(GRPCError) as info:
        await plugin.stub.allocate(request(f"{A}-0"))
    assert info.value.status == Status.NOT_FOUND
    assert f"no pod on node {NODE}" in str(info.value.message)
    with pytest.raises(GRPCError) as info:
        await plugin.stub.allocate(request("GPU-unknown-0"))
    assert info.value.status == Status.INVALID_ARGUMENT and "not offered" in str(info.value.message)


async def test_dynamic_mig_allocation_fails_and_releases(plugin: Plugin) -> None:
    plugin.kube.put_pod(allocating_pod("demo", NODE, f"{A}[1-2],NVIDIA,5120,14:;"))
    with pytest.raises(GRPCError) as info:
        await plugin.stub.allocate(request(f"{A}-0"))
    assert info.value.status == Status.UNIMPLEMENTED
    assert plugin.kube.pod("default", "demo")["metadata"]["annotations"]["hami.io/bind-phase"] == "failed"


async def test_preferred_allocation_steers_kubelet_to_the_pods_gpus(plugin: Plugin) -> None:
    plugin.kube.put_pod(allocating_pod("demo", NODE, f"{C},NVIDIA,1000,10:{A},NVIDIA,1000,10:;"))
    available = [vid for vid, _ in plugin.state.kubelet_devices()]
    response = await plugin.stub.get_preferred_allocation(
        pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=2)
            ]
        )
    )
    ids = response.container_responses[0].device_i_ds
    assert sorted(vid.rpartition("-")[0] for vid in ids) == sorted([A, C])
    # No pending pod: a plain choice of the first available IDs.
    plugin.kube.delete_pod("default", "demo")
    response = await plugin.stub.get_preferred_allocation(
        pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available, must_include_deviceIDs=[f"{B}-3"], allocation_size=2
                )
            ]
        )
    )
    assert response.container_responses[0].device_i_ds == [f"{B}-3", f"{A}-0"]


async def test_many_pending_pods_are_served_by_exact_gpu_match(tmp_path: Path) -> None:
    """Eight pods between bind and Allocate on one node, no lock: preferred IDs identify each."""
    kube = make_kube(lock=None)
    gpus = tuple(
        PhysicalGpu(uuid=f"GPU-{i:08d}", index=i, name="NVIDIA A10", memory_mib=24576) for i in range(8)
    )
    state = DeviceState(gpus, NodeDeviceSettings())
    settings = AllocateSettings()
    service = DevicePluginService(
        node_name=NODE,
        state=state,
        allocate_settings=settings,
        pods=HamiPendingPodSource(kube, kube),
        recorder=KubeAllocationRecorder(kube, kube),
        host=HostLayout(settings, root=tmp_path),
    )
    for i, gpu in enumerate(gpus):
        kube.put_pod(
            allocating_pod(
                f"p{i}", NODE, f"{gpu.uuid},NVIDIA,{1000 + i},10:;", created=f"2026-02-01T08:00:0{i}Z"
            )
        )
    async with ChannelFor([service]) as channel:
        stub = pb.DevicePluginStub(channel)
        for i in reversed(range(8)):  # kubelet admits in any order; IDs name the GPU
            response = await stub.allocate(request(f"{gpus[i].uuid}-{i}"))
            assert response.container_responses[0].envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{1000 + i}m"
            assert kube.pod("default", f"p{i}")["metadata"]["annotations"]["hami.io/bind-phase"] == "success"


async def test_list_and_watch_streams_health_changes(plugin: Plugin) -> None:
    updates: asyncio.Queue[list[pb.Device]] = asyncio.Queue()

    async def follow() -> None:
        async for response in plugin.stub.list_and_watch(pb.Empty()):
            await updates.put(list(response.devices))

    task = asyncio.create_task(follow())
    try:
        first = await asyncio.wait_for(updates.get(), 5)
        assert len(first) == 30 and {d.health for d in first} == {"Healthy"}
        assert [d.id for d in first[:2]] == [f"{A}-0", f"{A}-1"] and first[0].topology is None
        plugin.state.apply(HealthEvent(uuid=B, healthy=False, reason="XID 79", xid=79))
        second = await asyncio.wait_for(updates.get(), 5)
        assert {d.id.rpartition("-")[0] for d in second if d.health == "Unhealthy"} == {B}
        assert sum(d.health == "Unhealthy" for d in second) == 10
        plugin.state.apply(HealthEvent(uuid=B, healthy=True, reason="recovered"))
        third = await asyncio.wait_for(updates.get(), 5)
        assert {d.health for d in third} == {"Healthy"}
        plugin.service.close_streams()
        await asyncio.wait_for(task, 5)  # the stream ends on stop
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

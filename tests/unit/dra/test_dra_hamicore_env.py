"""hami.core.hamicore_env: the device plugin's Allocate and the DRA plugin give HAMi-core the same meaning."""

from __future__ import annotations

import itertools

import pytest

from hami.core.hamicore_env import DeviceLimit, HamiCoreOptions, HostFacts, hamicore_edits, visible_devices
from hami.core.model import ContainerDevice
from hami.deviceplugin.allocate import AllocateSettings, ContainerTarget, HostFiles, container_allocation
from hami.deviceplugin.virtual import NodeDeviceSettings

UID = "5d1c7c2e-0b7e-4c2a-9f4a-2b8f6f1e9a10"
CACHE_ID = "3f2c9a4e-6d7b-4f0e-9a51-7c2d1e8b6a90"
GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"


@pytest.mark.parametrize(
    ("scaling", "log_level", "no_core_limit", "versioned", "license_", "disable_control"),
    list(
        itertools.product((1.0, 1.5), ("1", ""), (False, True), (True, False), (False, True), (False, True))
    ),
)
def test_same_env_and_mounts_as_the_device_plugin(
    scaling: float,
    log_level: str,
    no_core_limit: bool,
    versioned: bool,
    license_: bool,
    disable_control: bool,
) -> None:
    devices = (
        ContainerDevice(uuid=GPU_A, type="NVIDIA", usedmem=3000, usedcores=30),
        ContainerDevice(uuid=GPU_B, type="NVIDIA", usedmem=2000, usedcores=30),
    )
    plugin = container_allocation(
        devices,
        ContainerTarget(pod_uid=UID, container_name="app", disable_control=disable_control),
        NodeDeviceSettings(
            memory_scaling=scaling, lib_cuda_log_level=log_level, disable_core_limit=no_core_limit
        ),
        AllocateSettings(hook_path="/usr/local", libvgpu_version="v2.8.0"),
        HostFiles(versioned_library=versioned, license=license_),
        cache_id=CACHE_ID,
        annotation_id="x",
    )
    limits = [DeviceLimit(uuid=d.uuid, memory_mib=d.usedmem, cores=d.usedcores) for d in devices]
    shared = hamicore_edits(
        limits,
        HamiCoreOptions(
            memory_scaling=scaling, lib_cuda_log_level=log_level, disable_core_limit=no_core_limit
        ),
        cache_dir=f"/usr/local/vgpu/containers/{UID}_app",
        cache_id=CACHE_ID,
        host=HostFacts(versioned_library=versioned, license=license_),
        disable_control=disable_control,
    )
    expected_env = {k: v for k, v in plugin.envs.items() if k != "NVIDIA_VISIBLE_DEVICES"}
    assert dict(shared.envs) == expected_env
    assert visible_devices(limits) == plugin.envs["NVIDIA_VISIBLE_DEVICES"]
    assert [(m.container_path, m.host_path, m.read_only) for m in shared.mounts] == [
        (m.container_path, m.host_path, m.read_only) for m in plugin.mounts
    ]


def test_worked_example_values() -> None:
    edits = hamicore_edits(
        [
            DeviceLimit(uuid=GPU_A, memory_mib=3000, cores=30),
            DeviceLimit(uuid=GPU_B, memory_mib=3000, cores=30),
        ],
        HamiCoreOptions(),
        cache_dir="/usr/local/vgpu/claims/c1",
        cache_id="c1",
    )
    assert list(edits.envs.items()) == [
        ("CUDA_DEVICE_MEMORY_LIMIT_0", "3000m"),
        ("CUDA_DEVICE_MEMORY_LIMIT_1", "3000m"),
        ("CUDA_DEVICE_SM_LIMIT", "30"),
        ("CUDA_DEVICE_MEMORY_SHARED_CACHE", "/usr/local/vgpu/c1.cache"),
        ("LIBCUDA_LOG_LEVEL", "1"),
    ]
    assert [m.container_path for m in edits.mounts] == [
        "/usr/local/vgpu/libvgpu.so",
        "/usr/local/vgpu",
        "/tmp/vgpulock",
        "/etc/ld.so.preload",
    ]
    assert edits.mounts[1].host_path == "/usr/local/vgpu/claims/c1"


def test_bad_inputs_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="at least one device"):
        hamicore_edits([], HamiCoreOptions(), cache_dir="/x", cache_id="c")
    with pytest.raises(ValueError, match="absolute"):
        hamicore_edits(
            [DeviceLimit(uuid="GPU-1", memory_mib=1, cores=1)], HamiCoreOptions(), cache_dir="x", cache_id="c"
        )
    with pytest.raises(ValueError, match="shared-cache id"):
        hamicore_edits(
            [DeviceLimit(uuid="GPU-1", memory_mib=1, cores=1)],
            HamiCoreOptions(),
            cache_dir="/x",
            cache_id="a/b",
        )
    with pytest.raises(ValueError, match="memory limit"):
        DeviceLimit(uuid="GPU-1", memory_mib=-1, cores=0)
    assert visible_devices([DeviceLimit(uuid="G1", memory_mib=1, cores=0)] * 2) == "G1"

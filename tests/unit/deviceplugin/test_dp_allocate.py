"""Allocate env/mounts against node spec §4.4-§4.8 (worked example byte for byte)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hami.core.model import ContainerDevice
from hami.deviceplugin.allocate import (
    AllocateSettings,
    ContainerTarget,
    HostFiles,
    HostLayout,
    MountSpec,
    UnsupportedAllocation,
    cache_dir_name,
    container_allocation,
    container_disables_control,
    parse_device_list_strategies,
)
from hami.deviceplugin.virtual import NodeDeviceSettings

UID = "5d1c7c2e-0b7e-4c2a-9f4a-2b8f6f1e9a10"
CACHE_ID = "3f2c9a4e-6d7b-4f0e-9a51-7c2d1e8b6a90"
GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
DEVICES = (
    ContainerDevice(uuid=GPU_A, type="NVIDIA", usedmem=3000, usedcores=30),
    ContainerDevice(uuid=GPU_B, type="NVIDIA", usedmem=3000, usedcores=30),
)
TARGET = ContainerTarget(pod_uid=UID, container_name="app")


def allocation(
    node: NodeDeviceSettings | None = None, settings: AllocateSettings | None = None, **kw: object
):
    return container_allocation(
        kw.pop("devices", DEVICES),  # type: ignore[arg-type]
        kw.pop("target", TARGET),  # type: ignore[arg-type]
        node or NodeDeviceSettings(),
        settings or AllocateSettings(),
        kw.pop("host", HostFiles(versioned_library=True)),  # type: ignore[arg-type]
        cache_id=CACHE_ID,
        annotation_id="uuid",
    )


def test_worked_example_env_and_mounts_exactly() -> None:
    result = allocation()
    assert list(result.envs.items()) == [
        ("NVIDIA_VISIBLE_DEVICES", f"{GPU_A},{GPU_B}"),
        ("CUDA_DEVICE_MEMORY_LIMIT_0", "3000m"),
        ("CUDA_DEVICE_MEMORY_LIMIT_1", "3000m"),
        ("CUDA_DEVICE_SM_LIMIT", "30"),
        ("CUDA_DEVICE_MEMORY_SHARED_CACHE", f"/usr/local/vgpu/{CACHE_ID}.cache"),
        ("LIBCUDA_LOG_LEVEL", "1"),
    ]
    assert result.mounts == (
        MountSpec(
            container_path="/usr/local/vgpu/libvgpu.so",
            host_path="/usr/local/vgpu/libvgpu.so.v2.8.0",
            read_only=True,
        ),
        MountSpec(
            container_path="/usr/local/vgpu",
            host_path=f"/usr/local/vgpu/containers/{UID}_app",
            read_only=False,
        ),
        MountSpec(container_path="/tmp/vgpulock", host_path="/tmp/vgpulock", read_only=False),
        MountSpec(
            container_path="/etc/ld.so.preload", host_path="/usr/local/vgpu/ld.so.preload", read_only=True
        ),
    )
    assert result.annotations == {}
    assert result.cdi_devices == ()


def test_oversubscribe_when_memory_scaling_above_one() -> None:
    result = allocation(NodeDeviceSettings(memory_scaling=1.5))
    assert result.envs["CUDA_OVERSUBSCRIBE"] == "true"
    assert "CUDA_OVERSUBSCRIBE" not in allocation(NodeDeviceSettings(memory_scaling=1.0)).envs


def test_disable_core_limit_and_log_level() -> None:
    result = allocation(NodeDeviceSettings(disable_core_limit=True, lib_cuda_log_level=""))
    assert result.envs["GPU_CORE_UTILIZATION_POLICY"] == "disable"
    assert "LIBCUDA_LOG_LEVEL" not in result.envs
    assert "CUDA_TASK_PRIORITY" not in result.envs  # set by the webhook, not the plugin (§4.4)


def test_cdi_annotations_replace_visible_devices() -> None:
    result = allocation(settings=AllocateSettings(device_list_strategies=("cdi-annotations",)))
    assert "NVIDIA_VISIBLE_DEVICES" not in result.envs
    assert result.annotations == {
        "cdi.k8s.io/nvidia-device-plugin_uuid": (
            f"k8s.device-plugin.nvidia.com/gpu={GPU_A},k8s.device-plugin.nvidia.com/gpu={GPU_B}"
        )
    }
    # HAMi-core env and mounts are identical in both modes (§4.7).
    base = allocation()
    assert {k: v for k, v in base.envs.items() if k != "NVIDIA_VISIBLE_DEVICES"} == dict(result.envs)
    assert base.mounts == result.mounts


def test_cdi_golden_prefixes_from_upstream_tests() -> None:
    one = container_allocation(
        (ContainerDevice(uuid="gpu0", type="NVIDIA", usedmem=1, usedcores=0),),
        TARGET,
        NodeDeviceSettings(),
        AllocateSettings(
            device_list_strategies=("cdi-annotations",),
            cdi_kind="nvidia.com/gpu",
            cdi_annotation_prefix="custom.cdi.k8s.io/",
        ),
        HostFiles(),
        cache_id="c",
        annotation_id="uuid",
    )
    assert one.annotations == {"custom.cdi.k8s.io/nvidia-device-plugin_uuid": "nvidia.com/gpu=gpu0"}


def test_cdi_cri_and_volume_mounts() -> None:
    cri = allocation(settings=AllocateSettings(device_list_strategies=("cdi-cri",)))
    assert cri.cdi_devices == (
        f"k8s.device-plugin.nvidia.com/gpu={GPU_A}",
        f"k8s.device-plugin.nvidia.com/gpu={GPU_B}",
    )
    assert "NVIDIA_VISIBLE_DEVICES" not in cri.envs
    vm = allocation(settings=AllocateSettings(device_list_strategies=("volume-mounts",)))
    assert vm.envs["NVIDIA_VISIBLE_DEVICES"] == "/var/run/nvidia-container-devices"
    assert vm.mounts[:2] == (
        MountSpec(
            container_path=f"/var/run/nvidia-container-devices/{GPU_A}",
            host_path="/dev/null",
            read_only=False,
        ),
        MountSpec(
            container_path=f"/var/run/nvidia-container-devices/{GPU_B}",
            host_path="/dev/null",
            read_only=False,
        ),
    )


def test_missing_versioned_library_license_and_disable_control() -> None:
    result = allocation(
        host=HostFiles(versioned_library=False, license=True),
        target=ContainerTarget(pod_uid=UID, container_name="app", disable_control=True),
    )
    paths = [(m.container_path, m.host_path) for m in result.mounts]
    assert paths == [
        ("/usr/local/vgpu/libvgpu.so", "/usr/local/vgpu/libvgpu.so"),
        ("/usr/local/vgpu", f"/usr/local/vgpu/containers/{UID}_app"),
        ("/tmp/vgpulock", "/tmp/vgpulock"),
        ("/tmp/license", "/usr/local/vgpu/license"),
        ("/usr/bin/vgpuvalidator", "/usr/local/vgpu/vgpuvalidator"),
    ]


def test_mig_mode_gets_only_the_base_response() -> None:
    result = allocation(NodeDeviceSettings(mode="mig"))
    assert dict(result.envs) == {"NVIDIA_VISIBLE_DEVICES": f"{GPU_A},{GPU_B}"}
    assert result.mounts == ()


def test_multi_gpu_order_and_per_device_limits() -> None:
    devices = tuple(
        ContainerDevice(uuid=f"GPU-{i}", type="NVIDIA", usedmem=1000 * (i + 1), usedcores=10 + i)
        for i in (3, 0, 2, 1)
    )
    result = allocation(devices=devices)
    assert result.envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-3,GPU-0,GPU-2,GPU-1"
    assert [result.envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] for i in range(4)] == [
        "4000m",
        "1000m",
        "3000m",
        "2000m",
    ]
    assert result.envs["CUDA_DEVICE_SM_LIMIT"] == "13"  # first device's cores


def test_dynamic_mig_reference_is_refused() -> None:
    with pytest.raises(UnsupportedAllocation, match="dynamic-MIG"):
        allocation(
            devices=(ContainerDevice(uuid=f"{GPU_A}[1-2]", type="NVIDIA", usedmem=5120, usedcores=14),)
        )


def test_empty_hook_path_keeps_hami_quirk() -> None:
    result = allocation(settings=AllocateSettings(hook_path=""))
    assert result.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == f"/vgpu/{CACHE_ID}.cache"


def test_device_list_strategy_parsing() -> None:
    assert parse_device_list_strategies("envvar") == ("envvar",)
    assert parse_device_list_strategies("cdi-annotations, envvar,envvar") == ("cdi-annotations", "envvar")
    with pytest.raises(ValueError, match="unknown device list strategy 'cdi'"):
        parse_device_list_strategies("cdi")
    with pytest.raises(ValueError, match="at least one"):
        parse_device_list_strategies(" , ")


def test_cuda_disable_control_parsing() -> None:
    assert container_disables_control({"env": [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}]})
    assert container_disables_control({"env": [{"name": "CUDA_DISABLE_CONTROL", "value": "1"}]})
    assert not container_disables_control({"env": [{"name": "CUDA_DISABLE_CONTROL", "value": "yes"}]})
    assert not container_disables_control({"env": "garbage"})
    assert not container_disables_control({})


def test_cache_dir_name_golden() -> None:
    assert cache_dir_name("testuid", "testcname") == "testuid_testcname"


def test_host_layout_prepares_world_writable_dirs(tmp_path: Path) -> None:
    settings = AllocateSettings()
    layout = HostLayout(settings, root=tmp_path)
    assert layout.files() == HostFiles(versioned_library=False, license=False)
    (tmp_path / "usr/local/vgpu").mkdir(parents=True)
    (tmp_path / "usr/local/vgpu/libvgpu.so.v2.8.0").write_bytes(b"")
    assert layout.files().versioned_library
    cache = tmp_path / "usr/local/vgpu/containers" / f"{UID}_app"
    cache.mkdir(parents=True)
    (cache / "stale.cache").write_text("old")
    layout.prepare(TARGET)
    assert cache.is_dir() and list(cache.iterdir()) == []
    assert stat.S_IMODE(cache.stat().st_mode) == 0o777
    assert stat.S_IMODE((tmp_path / "tmp/vgpulock").stat().st_mode) == 0o777

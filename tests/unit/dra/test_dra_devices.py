"""GPU sources of the DRA plugin: mock spec files and NVML (through a small fake module)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hami.core.errors import ConfigError
from hami.dra.devices import MockGpuSource, NvmlGpuSource, load_gpu_file, mock_gpus, mock_uuid


def test_mock_uuids_match_the_device_plugin_mock_backend() -> None:
    from hami.deviceplugin.backends.mock import mock_uuid as device_plugin_uuid

    assert mock_uuid("node-1", 3) == device_plugin_uuid("node-1", 3)
    gpus = mock_gpus("node-1", 2, model="NVIDIA T4", memory_mib=15360)
    assert [g.device_name for g in gpus] == ["hami-gpu-0", "hami-gpu-1"]
    assert gpus[1].memory_bytes == 15360 * 2**20 and gpus[1].device_paths == ("/dev/nvidia1",)


async def test_mock_files(tmp_path: Path) -> None:
    cluster_file = tmp_path / "mock-gpus.json"
    cluster_file.write_text(json.dumps({"count": 3, "model": "NVIDIA H100", "memory": 81920}))
    gpus = await MockGpuSource(load_gpu_file("n", cluster_file)).gpus()
    assert len(gpus) == 3 and gpus[0].name == "NVIDIA H100" and gpus[2].memory_bytes == 81920 * 2**20
    listed = tmp_path / "gpus.yaml"
    listed.write_text("gpus:\n- {uuid: GPU-x, model: NVIDIA L4, memory: 23034, numa: 1}\n- {numa: -1}\n")
    a, b = load_gpu_file("n", listed)
    assert (a.uuid, a.name, a.numa_node, b.numa_node) == ("GPU-x", "NVIDIA L4", 1, None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus:\n- {memory: 0}\n")
    with pytest.raises(ConfigError, match=r"gpus\[0\].memory"):
        load_gpu_file("n", bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_gpu_file("n", tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="--mock-gpus"):
        mock_gpus("n", -1)


class FakeNvml:
    """The calls NvmlGpuSource makes, with values from the H100 fixture (shared/fixtures/h100)."""

    class NVMLError(Exception):
        pass

    def __init__(self, device: dict[str, Any]) -> None:
        self.device = device
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.124.06"

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return self.device["uuid"].encode()

    def nvmlDeviceGetIndex(self, h: int) -> int:
        return int(self.device["index"])

    def nvmlDeviceGetName(self, h: int) -> str:
        return str(self.device["name"])

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=self.device["memory_v1"]["total"])

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=self.device["pci"]["busId"])

    def nvmlDeviceGetMinorNumber(self, h: int) -> int:
        return int(self.device["minor_number"])

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        major, minor = self.device["cuda_compute_capability"]
        return major, minor


async def test_nvml_source_reads_the_h100_fixture(h100_fixtures: Path, tmp_path: Path) -> None:
    device = json.loads((h100_fixtures / "nvml.json").read_text())["devices"][0]
    nvml = FakeNvml(device)
    source = NvmlGpuSource(nvml, sysfs_root=tmp_path)
    (gpu,) = await source.gpus()
    assert gpu.uuid == device["uuid"] and gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_bytes == 85520809984 and gpu.minor == 0 and gpu.numa_node is None
    assert (gpu.compute_capability, gpu.pci_bus_id, gpu.driver_version) == (
        "9.0",
        "0000:00:06.0",
        "570.124.06",
    )
    numa = tmp_path / "bus" / "pci" / "devices" / "0000:00:06.0"
    numa.mkdir(parents=True)
    (numa / "numa_node").write_text("1\n")
    assert (await source.gpus())[0].numa_node == 1
    await source.close()
    assert nvml.calls == ["init", "shutdown"]

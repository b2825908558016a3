"""CDI spec validity (k8s-apis.md §5) and mock-capacity counts (node spec §9)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from hami.core.model import DeviceInfo
from hami.core.node_annotations import encode_node_devices
from hami.deviceplugin.backend import PhysicalGpu
from hami.deviceplugin.capacity import CapacityNames, capacity_patch, mock_capacity, needs_update
from hami.deviceplugin.cdi import cdi_spec, spec_file_name, validate_spec, write_spec

GPUS = (
    PhysicalGpu(uuid="GPU-aaaa", index=0, name="NVIDIA A10", memory_mib=24576, minor_number=0),
    PhysicalGpu(uuid="GPU-bbbb", index=1, name="NVIDIA A10", memory_mib=24576, minor_number=3),
)


def test_cdi_spec_is_valid_and_complete() -> None:
    spec = cdi_spec(GPUS)
    assert validate_spec(spec) == []
    assert spec["cdiVersion"] == "0.6.0"
    assert spec["kind"] == "k8s.device-plugin.nvidia.com/gpu"
    assert [d["name"] for d in spec["devices"]] == ["GPU-aaaa", "GPU-bbbb", "all"]
    assert spec["devices"][1]["containerEdits"] == {"deviceNodes": [{"path": "/dev/nvidia3"}]}
    assert spec["devices"][2]["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidia0"},
        {"path": "/dev/nvidia3"},
    ]
    assert spec["containerEdits"]["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert {"path": "/dev/nvidiactl"} in spec["containerEdits"]["deviceNodes"]


def test_validate_spec_names_problems() -> None:
    bad = {
        "cdiVersion": "1.x",
        "kind": "Bad_Vendor/gpu",
        "devices": [
            {"name": "-x-", "containerEdits": {}},
            {"name": "ok", "containerEdits": {"env": ["NOEQ"]}},
        ],
        "extra": 1,
    }
    problems = validate_spec(bad)
    assert any("cdiVersion" in p for p in problems)
    assert any("DNS subdomain" in p for p in problems)
    assert any("devices[0].name" in p for p in problems)
    assert any("env[0]" in p for p in problems)
    assert any("unknown top-level field 'extra'" in p for p in problems)
    assert validate_spec({"cdiVersion": "0.6.0", "kind": "a.com/b", "devices": []}) == [
        "devices must be a non-empty list"
    ]


def test_write_spec_atomically(tmp_path: Path) -> None:
    path = write_spec(cdi_spec(GPUS), tmp_path / "cdi")
    assert path.name == spec_file_name() == "k8s.device-plugin.nvidia.com-gpu.json"
    assert validate_spec(json.loads(path.read_text())) == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_spec(cdi_spec(GPUS[:1]), tmp_path / "cdi")
    assert [p.name for p in (tmp_path / "cdi").iterdir()] == [path.name]  # replaced, no temp left


def node(gpu_count: str | None, devices: tuple[DeviceInfo, ...] | None) -> dict[str, object]:
    ann = {} if devices is None else {"hami.io/node-nvidia-register": encode_node_devices(devices)}
    cap = {} if gpu_count is None else {"nvidia.com/gpu": gpu_count}
    return {"metadata": {"name": "n", "annotations": ann}, "status": {"capacity": cap}}


DEVICES = tuple(
    DeviceInfo(id=f"GPU-{i}", index=i, count=10, devmem=32768, devcore=100, type="NVIDIA V100", health=True)
    for i in range(2)
)


def test_mock_capacity_readme_example() -> None:
    counts = mock_capacity(node("20", DEVICES))
    assert counts == {
        "nvidia.com/gpumem": 65536,
        "nvidia.com/gpucores": 200,
        "nvidia.com/gpumem-percentage": 200,
    }
    assert capacity_patch(counts) == {
        "status": {
            "capacity": {
                "nvidia.com/gpumem": "65536",
                "nvidia.com/gpucores": "200",
                "nvidia.com/gpumem-percentage": "200",
            },
            "allocatable": {
                "nvidia.com/gpumem": "65536",
                "nvidia.com/gpucores": "200",
                "nvidia.com/gpumem-percentage": "200",
            },
        }
    }


def test_mock_capacity_zero_without_gpu_capacity_and_memory_factor() -> None:
    zero = {"nvidia.com/gpumem": 0, "nvidia.com/gpucores": 0, "nvidia.com/gpumem-percentage": 0}
    assert mock_capacity(node(None, DEVICES)) == zero
    assert mock_capacity(node("0", DEVICES)) == zero
    assert mock_capacity(node("20", None)) == zero
    bad = node("20", None)
    bad["metadata"]["annotations"] = {"hami.io/node-nvidia-register": "[{"}  # type: ignore[index]
    assert mock_capacity(bad) == zero
    legacy = node("20", None)
    legacy["metadata"]["annotations"] = {  # type: ignore[index]
        "hami.io/node-nvidia-register": "GPU-0,10,32768,100,NVIDIA-Tesla V100,0,true,0,hami-core:"
    }
    assert mock_capacity(legacy)["nvidia.com/gpumem"] == 32768
    names = CapacityNames(memory_factor=1024)
    assert mock_capacity(node("20", DEVICES), names)["nvidia.com/gpumem"] == 64


def test_needs_update_compares_both_sections() -> None:
    counts = {"nvidia.com/gpumem": 1}
    assert needs_update({"status": {}}, counts)
    current = {"status": {"capacity": {"nvidia.com/gpumem": "1"}, "allocatable": {"nvidia.com/gpumem": "1"}}}
    assert not needs_update(current, counts)

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hami.core import keys
from hami.monitor.gpuinfo import FakeGpuInfo, HostGpu, NvmlGpuInfo, mock_gpus
from hami.monitor.metrics import MonitorCollector
from hami.monitor.pods import InMemoryPodSource
from hami.monitor.region import read_region_file
from hami.monitor.service import MonitorConfig, MonitorService, mig_devices

UID = "5d8b1f7e-aaaa-4bbb-8ccc-000000000001"
UID_EXITED = "5d8b1f7e-aaaa-4bbb-8ccc-000000000002"
GPU0 = "GPU-c7a18d9c-18fd-13e6-447c-983f490b6495"
NOW = 1795719961.0  # ten seconds after the c_1_hold capture's last kernel


def pod(uid: str, name: str, containers: list[str], annotations: dict[str, str] | None = None) -> Any:
    return {
        "metadata": {"uid": uid, "name": name, "namespace": "team-a", "annotations": annotations or {}},
        "spec": {"nodeName": "gpu-node-1", "containers": [{"name": c} for c in containers]},
    }


def container_dir(root: Path, h100: Path, name: str, fixture: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "libvgpu.so").touch()
    (d / "region.cache").write_bytes((h100 / f"{fixture}.cache").read_bytes())
    return d


def scrape(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


@pytest.fixture
def h100_gpu(h100_fixtures: Path) -> HostGpu:
    dev = json.loads((h100_fixtures / "nvml.json").read_text())["devices"][0]
    return HostGpu(
        index=dev["index"],
        uuid=dev["uuid"],
        name=dev["name"],
        memory_used=dev["memory_v1"]["used"],
        memory_total=dev["memory_v1"]["total"],
        utilization=dev["utilization"]["gpu"],
    )


async def test_metrics_of_the_h100_capture(tmp_path: Path, h100_fixtures: Path, h100_gpu: HostGpu) -> None:
    container_dir(tmp_path, h100_fixtures, f"{UID}_worker", "vgpu_c_1_hold")
    container_dir(tmp_path, h100_fixtures, f"{UID_EXITED}_main", "vgpu_d_after_exit")
    container_dir(tmp_path, h100_fixtures, f"{UID}_sidecar-not-in-spec", "vgpu_b_1_hold")
    pods = InMemoryPodSource([pod(UID, "trainer", ["worker"]), pod(UID_EXITED, "done", ["main"])])
    service = MonitorService(
        MonitorConfig(node_name="gpu-node-1", containers_dir=tmp_path, feedback=False),
        pods,
        FakeGpuInfo([h100_gpu]),
        wall_time=lambda: NOW,
    )
    assert service.snapshot() is None
    registry = CollectorRegistry()
    registry.register(MonitorCollector(service.snapshot, wall_time=lambda: NOW))
    # Before the first pass: families exist, no samples.
    assert "vGPU_device_memory_usage_in_bytes{" not in generate_latest(registry).decode()

    await service.tick()
    found = scrape(registry)

    host = {
        "deviceidx": "0",
        "deviceuuid": GPU0,
        "devicetype": "NVIDIA-NVIDIA H100 80GB HBM3",
        "node": "gpu-node-1",
        "zone": "vGPU",
    }
    assert found["HostGPUMemoryUsage"] == [(host, 503316480.0)]
    assert found["HostCoreUtilization"] == [(host, 0.0)]

    worker = {
        "podnamespace": "team-a",
        "podname": "trainer",
        "ctrname": "worker",
        "vdeviceid": "0",
        "deviceuuid": GPU0,
        "zone": "vGPU",
    }
    exited = {**worker, "podname": "done", "ctrname": "main"}
    usage = dict(
        (json.dumps(lab, sort_keys=True), v) for lab, v in found["vGPU_device_memory_usage_in_bytes"]
    )
    assert usage == {
        json.dumps(worker, sort_keys=True): 4575985664.0,  # two live processes: 4.26 GiB
        json.dumps(exited, sort_keys=True): 0.0,  # the only slot has pid 0: exited
    }
    limits = {lab["podname"]: v for lab, v in found["vGPU_device_memory_limit_in_bytes"]}
    assert limits == {"trainer": 4294967296.0, "done": 1073741824.0}
    desc = {lab["podname"]: (lab, v) for lab, v in found["Device_memory_desc_of_container"]}
    lab, value = desc["trainer"]
    assert value == 4575985664.0
    assert (lab["context"], lab["module"], lab["data"], lab["offset"]) == (
        "1086324736",
        "0",
        "3489660928",
        "0",
    )
    assert {lab["podname"]: v for lab, v in found["Device_utilization_desc_of_container"]} == {
        "trainer": 3.0,
        "done": 0.0,
    }
    last = {lab["podname"]: v for lab, v in found["Device_last_kernel_of_container"]}
    assert last == {"trainer": 10.0, "done": 0.0}  # d's last kernel is in the future of NOW: clamped
    # Only the overshooting container has the over-limit gauge: 4.26 GiB - 4 GiB.
    assert found["hami_vgpu_memory_over_limit_bytes"] == [(worker, 281018368.0)]
    assert found["hami_monitor_unreadable_regions"] == [({}, 0.0)]
    # The directory whose container is not in the pod spec is not exported.
    assert all(
        lab["ctrname"] != "sidecar-not-in-spec" for lab, _ in found["vGPU_device_memory_limit_in_bytes"]
    )
    assert "4575985664" in service.describe() and "OVER LIMIT by 281018368" in service.describe()
    await service.aclose()


async def test_service_feedback_and_mig_lock(tmp_path: Path, h100_fixtures: Path) -> None:
    containers = tmp_path / "containers"
    d = container_dir(containers, h100_fixtures, f"{UID}_worker", "vgpu_c_1_hold")
    lock = tmp_path / "hami-mig-apply.lock"
    service = MonitorService(
        MonitorConfig(node_name="n", containers_dir=containers, mig_lock_file=lock),
        InMemoryPodSource([pod(UID, "trainer", ["worker"])]),
        FakeGpuInfo(mock_gpus(1)),
    )
    lock.touch()
    await service.tick()
    assert service.last_feedback is None
    region = read_region_file(d / "region.cache")
    assert (region.recent_kernel, region.utilization_switch) == (2, 1)  # untouched while MIG applies
    lock.unlink()
    await service.tick()
    assert service.last_feedback is not None and service.last_feedback.switched_off == (f"{UID}_worker",)
    region = read_region_file(d / "region.cache")
    assert (region.recent_kernel, region.utilization_switch) == (1, 0)
    await service.aclose()


async def test_service_removes_stale_directories_of_gone_pods(tmp_path: Path, h100_fixtures: Path) -> None:
    live = container_dir(tmp_path, h100_fixtures, f"{UID}_worker", "vgpu_c_1_hold")
    stale = container_dir(tmp_path, h100_fixtures, f"{UID_EXITED}_main", "vgpu_d_after_exit")
    pods = InMemoryPodSource([pod(UID, "trainer", ["worker"])], synced=False)
    clock = [time.time()]
    service = MonitorService(
        MonitorConfig(node_name="n", containers_dir=tmp_path, cleanup_grace=60, feedback=False),
        pods,
        FakeGpuInfo(),
        wall_time=lambda: clock[0],
    )
    clock[0] += 3600
    await service.tick()
    assert stale.exists()  # the pod source has not synced: nothing is deleted
    pods.set_pods([pod(UID, "trainer", ["worker"])])
    await service.tick()
    assert not stale.exists() and live.exists()
    await service.aclose()


async def test_failing_gpu_source_does_not_stop_the_pass(tmp_path: Path, h100_fixtures: Path) -> None:
    class Broken(FakeGpuInfo):
        def host_gpus(self) -> tuple[HostGpu, ...]:
            raise RuntimeError("NVML gone")

    container_dir(tmp_path, h100_fixtures, f"{UID}_worker", "vgpu_c_1_hold")
    gpus = Broken()
    service = MonitorService(
        MonitorConfig(node_name="n", containers_dir=tmp_path, feedback=False),
        InMemoryPodSource([pod(UID, "trainer", ["worker"])]),
        gpus,
    )
    snap = await service.tick()
    assert snap.host_gpus == () and len(snap.containers) == 1
    await service.aclose()
    assert gpus.closed


def test_mig_devices_from_allocation_annotation() -> None:
    annotated = pod(
        UID,
        "mig-pod",
        ["a", "b"],
        {
            keys.VGPU_DEVICES_ALLOCATED: "GPU-p[1-2],NVIDIA,10240,28:;"
            "GPU-q,NVIDIA,100,10:GPU-p[0-5],NVIDIA,1,1:;"
        },
    )
    broken = pod(UID_EXITED, "broken", ["x"], {keys.VGPU_DEVICES_ALLOCATED: "GPU-p[x-1],NVIDIA,1,1:;"})
    ids = {("GPU-p", 2): 7, ("GPU-p", 5): 9}
    rows = mig_devices({UID: annotated, UID_EXITED: broken}, lambda uuid, pos: ids.get((uuid, pos)))
    assert [(r.container, r.position, r.parent_uuid, r.instance_id) for r in rows] == [
        ("a", 2, "GPU-p", 7),
        ("b", 5, "GPU-p", 9),
    ]
    registry = CollectorRegistry()
    from hami.monitor.metrics import MonitorSnapshot

    snap = MonitorSnapshot(node="n", taken_at=0.0, mig_devices=rows)
    registry.register(MonitorCollector(lambda: snap))
    found = scrape(registry)
    assert sorted((lab["ctrname"], lab["vdeviceid"], lab["instanceid"]) for lab, _ in found["MigInfo"]) == [
        ("a", "2", "7"),
        ("b", "5", "9"),
    ]


class FakeNvml:
    """pynvml's surface as the monitor uses it, backed by fixtures/h100/nvml.json."""

    class NVMLError(Exception):
        pass

    def __init__(self, facts: dict[str, Any]) -> None:
        self.devices = facts["devices"]
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        return self.devices[i]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> dict[str, Any]:
        for dev in self.devices:
            if dev["uuid"] == uuid:
                return dev
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(**h["memory_v1"])

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(**h["utilization"])

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return str(h["uuid"])

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> bytes:
        return str(h["name"]).encode()  # older bindings return bytes

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: dict[str, Any], i: int) -> None:
        raise self.NVMLError("Not Supported")  # MIG is disabled on the captured H100

    def nvmlDeviceGetGpuInstanceId(self, h: object) -> int:
        raise AssertionError("unreachable")


def test_nvml_gpu_info_on_captured_facts(h100_fixtures: Path, h100_gpu: HostGpu) -> None:
    nvml = FakeNvml(json.loads((h100_fixtures / "nvml.json").read_text()))
    info = NvmlGpuInfo(nvml)
    assert info.host_gpus() == (h100_gpu,)
    assert info.host_gpus()[0].devicetype == "NVIDIA-NVIDIA H100 80GB HBM3"
    assert info.mig_gpu_instance_id(GPU0, 0) is None
    assert info.mig_gpu_instance_id("GPU-unknown", 0) is None
    info.close()
    info.close()
    assert nvml.calls == ["init", "shutdown"]

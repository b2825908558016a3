"""The NVML backend against a recorded NVML built from fixtures/h100/nvml.json."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from hami.core.node_annotations import encode_node_devices
from hami.deviceplugin.backend import HEALTH_EVENT_MASK, HealthEvent, PhysicalGpu, health_policy
from hami.deviceplugin.backends.nvml import NvmlBackend, normalize_bus_id, read_numa_node
from hami.deviceplugin.backends.nvml_replay import RecordedNvml
from hami.deviceplugin.virtual import NodeDeviceSettings, registered_devices

H100 = "GPU-c7a18d9c-18fd-13e6-447c-983f490b6495"
OTHER = "GPU-11111111-2222-3333-4444-555555555555"
XID = 0x8


def sysfs(tmp_path: Path, numa: dict[str, str]) -> Path:
    for bus, value in numa.items():
        d = tmp_path / "bus/pci/devices" / bus
        d.mkdir(parents=True)
        (d / "numa_node").write_text(value + "\n")
    return tmp_path


async def test_discovery_matches_the_h100_capture(nvml_capture: dict[str, Any], tmp_path: Path) -> None:
    nvml = RecordedNvml(nvml_capture)
    backend = NvmlBackend(nvml, sysfs_root=sysfs(tmp_path, {"0000:00:06.0": "-1"}))
    gpus = await backend.devices()
    assert gpus == (
        PhysicalGpu(
            uuid=H100,
            index=0,
            name="NVIDIA H100 80GB HBM3",
            memory_mib=85520809984 // 2**20,
            pci_bus_id="0000:00:06.0",
            numa_node=None,
            minor_number=0,
            compute_capability="9.0",
            mig_enabled=False,
        ),
    )
    assert gpus[0].memory_mib == 81559
    assert gpus[0].device_paths == ("/dev/nvidia0",)
    await backend.close()
    assert nvml.calls.count("nvmlInit") == 1 and nvml.calls[-1] == "nvmlShutdown"


async def test_registration_annotation_for_the_h100(nvml_capture: dict[str, Any], tmp_path: Path) -> None:
    backend = NvmlBackend(RecordedNvml(nvml_capture), sysfs_root=tmp_path)
    gpus = await backend.devices()
    value = encode_node_devices(registered_devices(gpus, {H100: True}, NodeDeviceSettings()))
    assert value == (
        '[{"id":"GPU-c7a18d9c-18fd-13e6-447c-983f490b6495","count":10,"devmem":81559,"devcore":100,'
        '"type":"NVIDIA H100 80GB HBM3","mode":"hami-core","health":true,"devicepairscore":{}}]'
    )


async def test_numa_from_sysfs_and_errors_tolerated(two_gpu_capture: dict[str, Any], tmp_path: Path) -> None:
    two_gpu_capture["devices"][1]["errors"]["memory_v1"] = "NVMLError_Unknown: Unknown Error (nvmlReturn=999)"
    two_gpu_capture["devices"][1]["errors"]["mig_mode"] = (
        "NVMLError_NotSupported: Not Supported (nvmlReturn=3)"
    )
    root = sysfs(tmp_path, {"0000:00:06.0": "-1", "0000:3b:00.0": "1"})
    gpus = await NvmlBackend(RecordedNvml(two_gpu_capture), sysfs_root=root).devices()
    assert [(g.index, g.numa_node, g.pci_bus_id, g.memory_mib, g.mig_enabled) for g in gpus] == [
        (0, None, "0000:00:06.0", 81559, False),
        (1, 1, "0000:3b:00.0", 0, False),
    ]


def test_bus_id_and_numa_helpers(tmp_path: Path) -> None:
    assert normalize_bus_id(b"00000000:3B:00.0\x00") == "0000:3b:00.0"
    assert normalize_bus_id("0000:3b:00.0") == "0000:3b:00.0"
    assert normalize_bus_id("garbage") == ""
    assert read_numa_node(tmp_path, "") is None
    assert read_numa_node(tmp_path, "0000:99:00.0") is None  # unreadable: no NUMA
    root = sysfs(tmp_path, {"0000:01:00.0": "0", "0000:02:00.0": "junk"})
    assert read_numa_node(root, "0000:01:00.0") == 0
    assert read_numa_node(root, "0000:02:00.0") is None


async def test_blocking_calls_run_off_the_event_loop(nvml_capture: dict[str, Any], tmp_path: Path) -> None:
    threads: set[str] = set()

    class Spy(RecordedNvml):
        def nvmlDeviceGetCount(self) -> int:
            threads.add(threading.current_thread().name)
            return super().nvmlDeviceGetCount()

    await NvmlBackend(Spy(nvml_capture), sysfs_root=tmp_path).devices()
    assert threads and threading.main_thread().name not in threads


async def next_event(events: Any, wait_s: float = 5.0) -> HealthEvent:
    return await asyncio.wait_for(anext(events), wait_s)


async def test_xid_marks_unhealthy_application_xids_ignored(
    two_gpu_capture: dict[str, Any], tmp_path: Path
) -> None:
    nvml = RecordedNvml(two_gpu_capture)
    backend = NvmlBackend(nvml, sysfs_root=tmp_path, event_timeout_ms=20, policy=health_policy("109,48"))
    events = backend.health_events()
    first = asyncio.ensure_future(next_event(events))
    await asyncio.sleep(0.1)  # watcher registered
    assert nvml.registered_events(H100) == HEALTH_EVENT_MASK & 0xFF9F
    for xid in (13, 31, 43, 45, 68, 109, 48):  # application XIDs and one disabled by the env
        nvml.inject_event(H100, XID, xid)
    nvml.inject_event(H100, 0x2, 0)  # a non-XID event (double-bit ECC) is not acted on
    nvml.inject_event(OTHER, XID, 79)  # GPU fallen off the bus
    event = await first
    assert event == HealthEvent(uuid=OTHER, healthy=False, reason="XID 79", xid=79)
    await events.aclose()
    assert "nvmlEventSetFree" in nvml.calls


async def test_forced_xid_overrides_ignore(nvml_capture: dict[str, Any], tmp_path: Path) -> None:
    nvml = RecordedNvml(nvml_capture)
    backend = NvmlBackend(nvml, sysfs_root=tmp_path, event_timeout_ms=20, policy=health_policy("", "13"))
    events = backend.health_events()
    pending = asyncio.ensure_future(next_event(events))
    await asyncio.sleep(0.05)
    nvml.inject_event(H100, XID, 13)
    assert (await pending).xid == 13
    await events.aclose()


async def test_disabled_health_checks_report_nothing(nvml_capture: dict[str, Any], tmp_path: Path) -> None:
    nvml = RecordedNvml(nvml_capture)
    backend = NvmlBackend(nvml, sysfs_root=tmp_path, event_timeout_ms=20, policy=health_policy("all"))
    events = backend.health_events()
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.1)
    nvml.inject_event(H100, XID, 79)
    await asyncio.sleep(0.1)
    assert not pending.done()
    pending.cancel()
    assert "nvmlEventSetCreate" not in nvml.calls


async def test_recovery_after_a_quiet_period(nvml_capture: dict[str, Any], tmp_path: Path) -> None:
    now = [1000.0]
    nvml = RecordedNvml(nvml_capture)
    backend = NvmlBackend(
        nvml,
        sysfs_root=tmp_path,
        event_timeout_ms=10,
        policy=health_policy(recovery_after_s=60),
        clock=lambda: now[0],
    )
    events = backend.health_events()
    pending = asyncio.ensure_future(next_event(events))
    await asyncio.sleep(0.05)
    nvml.inject_event(H100, XID, 79)
    assert (await pending).healthy is False
    nvml.lose_gpu(H100)  # still broken when the quiet period ends: stays unhealthy
    now[0] += 61
    pending = asyncio.ensure_future(next_event(events, wait_s=10))
    await asyncio.sleep(0.1)
    assert not pending.done()
    nvml.lose_gpu(H100, lost=False)
    now[0] += 61
    assert await pending == HealthEvent(uuid=H100, healthy=True, reason="recovered")
    await events.aclose()


async def test_event_wait_failure_marks_all_unhealthy(
    two_gpu_capture: dict[str, Any], tmp_path: Path
) -> None:
    nvml = RecordedNvml(two_gpu_capture)
    backend = NvmlBackend(
        nvml, sysfs_root=tmp_path, event_timeout_ms=10, policy=health_policy(recovery_after_s=0)
    )
    events = backend.health_events()
    pending = asyncio.ensure_future(next_event(events))
    await asyncio.sleep(0.05)
    nvml.fail_event_wait(RecordedNvml.NVML_ERROR_GPU_IS_LOST)
    got = {(await pending).uuid, (await next_event(events)).uuid}
    assert got == {H100, OTHER}
    await events.aclose()


async def test_registration_failure_reports_device_unhealthy(
    nvml_capture: dict[str, Any], tmp_path: Path
) -> None:
    nvml_capture["devices"][0]["errors"]["supported_event_types"] = (
        "NVMLError_Unknown: Unknown (nvmlReturn=999)"
    )
    backend = NvmlBackend(RecordedNvml(nvml_capture), sysfs_root=tmp_path, event_timeout_ms=10)
    events = backend.health_events()
    event = await next_event(events)
    assert not event.healthy and "event registration failed" in event.reason
    await events.aclose()


async def test_not_supported_events_are_skipped_not_unhealthy(
    nvml_capture: dict[str, Any], tmp_path: Path
) -> None:
    nvml_capture["devices"][0]["errors"]["supported_event_types"] = "NVMLError_NotSupported: x (nvmlReturn=3)"
    nvml = RecordedNvml(nvml_capture)
    backend = NvmlBackend(nvml, sysfs_root=tmp_path, event_timeout_ms=10)
    events = backend.health_events()
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.1)
    assert not pending.done()
    pending.cancel()


async def test_topology_scores_from_levels_and_nvlinks(
    two_gpu_capture: dict[str, Any], tmp_path: Path
) -> None:
    a, b = two_gpu_capture["devices"]
    a["topology_levels"] = {b["uuid"]: 10}  # single PCIe switch
    b["topology_levels"] = {a["uuid"]: 10}
    a["nvlink_links"] = ["0000:3b:00.0", "0000:3b:00.0", ""]
    b["nvlink_links"] = ["0000:00:06.0", "0000:00:06.0", "0000:00:06.0"]
    topology = await NvmlBackend(RecordedNvml(two_gpu_capture), sysfs_root=tmp_path).topology()
    assert topology.scores == {H100: {OTHER: 250}, OTHER: {H100: 350}}
    with pytest.raises(KeyError):
        RecordedNvml(two_gpu_capture).inject_event("GPU-unknown", XID, 79)
